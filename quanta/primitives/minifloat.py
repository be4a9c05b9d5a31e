"""Small floating-point formats (FP8, FP6, FP4): round-to-nearest-even with saturation, and bit-level codes.

A minifloat with ``e`` exponent bits, ``m`` mantissa bits and exponent bias ``b`` represents

* subnormals ``(-1)^s * 0.mmm * 2^(1 - b)`` when the exponent field is 0,
* normals ``(-1)^s * 1.mmm * 2^(E - b)`` otherwise.

Round-to-nearest-even works on the fp32 bit pattern of the magnitude: dropping ``23 - m`` mantissa bits with
the usual round-half-even carry gives normal codes directly, and the subnormal binade (one fixed spacing) is
rounded by fp32 addition of a magic constant. Stochastic rounding scales each value by its binade's spacing
``2^(floor(log2 a) - m)`` and rounds that to an integer. Values
beyond the largest finite value saturate to it, which is what a quantizer wants (torch's plain casts are not
consistent about it: in torch 2.13 ``float8_e5m2`` overflows to inf while ``float8_e4m3fn`` saturates).
Codes are the format's bit patterns ``s | exponent | mantissa``, identical to the bytes torch's
``float8_e4m3fn`` / ``float8_e5m2`` casts produce in range.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from quanta.primitives.rounding import round_values

__all__ = ["MiniFloat"]


@dataclass(frozen=True)
class MiniFloat:
    """A sign + ``exp_bits`` + ``man_bits`` floating-point encoding with saturating round-to-nearest-even."""

    exp_bits: int
    man_bits: int
    bias: int
    max_value: float

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal number (also the scale of subnormals)."""
        return 1 - self.bias

    def round(self, x: torch.Tensor, rounding: str = "rne", generator: torch.Generator | None = None) -> torch.Tensor:
        """Round fp32 values onto the format's grid (saturating), returning fp32 values."""
        if rounding == "rne":
            return self.decode(self.encode(x))
        return self._round_arithmetic(x, rounding, generator)

    def _round_arithmetic(self, x: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor:
        # Works for any rounding: scale each value by its binade's spacing, round to an integer, scale back.
        x = x.float()
        a = x.abs().clamp(max=self.max_value)
        exponent = (torch.frexp(a).exponent - 1).clamp(min=self.min_exponent)  # floor(log2 a), subnormals clamped
        spacing = torch.ldexp(torch.ones_like(a), exponent - self.man_bits)
        mag = (round_values(a / spacing, rounding, generator) * spacing).clamp(max=self.max_value)
        return torch.where(torch.signbit(x), -mag, mag)

    def encode(self, x: torch.Tensor, rounding: str = "rne", generator: torch.Generator | None = None) -> torch.Tensor:
        """Bit-pattern codes (int32 in ``[0, 2**bits)``) of ``x`` rounded onto the grid."""
        if rounding != "rne":
            return self._codes_of_values(self._round_arithmetic(x, rounding, generator))
        x = x.float()
        a = x.abs().clamp_(max=self.max_value)
        # Normal binades: round the fp32 bit pattern to man_bits mantissa bits, nearest-even, in integers; the
        # carry out of the mantissa lands in the exponent as it should. Then rebase the exponent to our bias.
        shift = 23 - self.man_bits
        bits = a.view(torch.int32)
        normal = (bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1)) >> shift
        normal -= (127 - self.bias) << self.man_bits
        # Subnormal binade: one fixed spacing q. Adding and removing q * 2**23 makes fp32 round to a multiple of
        # q, nearest-even; the code is then the multiple itself (q * 2**m rounds up into the first normal code).
        q = 2.0 ** (self.min_exponent - self.man_bits)
        magic = q * 2.0**23
        subnormal = ((a + magic) - magic).mul_(1.0 / q).to(torch.int32)
        codes = torch.where(a < 2.0**self.min_exponent, subnormal, normal)
        return codes | (torch.signbit(x).to(torch.int32) << (self.exp_bits + self.man_bits))

    def _codes_of_values(self, v: torch.Tensor) -> torch.Tensor:
        mag = v.abs()
        exponent = torch.frexp(mag).exponent - 1
        normal = (exponent >= self.min_exponent) & (mag > 0)
        # Normal: field = E + bias, mantissa = mag / 2^(E - m) - 2^m.
        # Subnormal: field = 0, mantissa = mag / 2^(emin - m).
        field = torch.where(normal, exponent + self.bias, torch.zeros_like(exponent))
        unit = torch.where(normal, exponent, torch.full_like(exponent, self.min_exponent)) - self.man_bits
        mantissa = torch.ldexp(mag, -unit).to(torch.int32) - torch.where(normal, 1 << self.man_bits, 0)
        sign = torch.signbit(v).to(torch.int32) << (self.exp_bits + self.man_bits)
        return (sign | (field.to(torch.int32) << self.man_bits) | mantissa).to(torch.int32)

    @cached_property
    def table(self) -> torch.Tensor:
        """Value of every code, fp32, indexed by code (codes outside the finite range decode to NaN)."""
        codes = torch.arange(1 << self.bits)
        mantissa = (codes & ((1 << self.man_bits) - 1)).double()
        field = (codes >> self.man_bits) & ((1 << self.exp_bits) - 1)
        sign = torch.where(codes >> (self.exp_bits + self.man_bits) == 1, -1.0, 1.0).double()
        frac = mantissa / (1 << self.man_bits)
        normal = torch.ldexp(1.0 + frac, (field - self.bias).double())
        subnormal = torch.ldexp(frac, torch.full_like(frac, self.min_exponent))
        mag = torch.where(field > 0, normal, subnormal)
        mag = torch.where(mag <= self.max_value, mag, torch.full_like(mag, float("nan")))
        return (sign * mag).float()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """fp32 values of bit-pattern codes."""
        return self.table.to(codes.device)[codes.long()]
