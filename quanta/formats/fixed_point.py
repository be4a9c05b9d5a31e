"""Fixed-point Qm.n: signed two's complement with ``m`` integer bits (sign included) and ``n`` fraction bits.

The step is the constant ``2**-n`` (no fitted scale), so ``q4.4`` is an 8-bit code covering
``[-8, 8 - 1/16]`` in steps of 1/16. Values outside the range saturate. Only per-tensor makes sense: there is
no parameter to vary per channel or group.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.errors import BitWidthError
from quanta.formats.base import Format, Params, register_family
from quanta.primitives.affine import int_range, quantize_affine

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class FixedPointFormat(Format):
    signed_codes = True
    grouped = False
    roundings = ("rne", "sr")

    def __init__(self, int_bits: int, frac_bits: int) -> None:
        if int_bits < 1 or not 1 <= int_bits + frac_bits <= 16:
            raise BitWidthError(
                f"fixed-point q{int_bits}.{frac_bits} is invalid: the integer part counts the sign bit, so it needs "
                "at least 1 bit, and the total m + n must be 1..16 (e.g. q4.4, q1.7, q8.8)."
            )
        self.int_bits, self.frac_bits = int_bits, frac_bits
        self.bits = int_bits + frac_bits
        self.name = f"q{int_bits}.{frac_bits}"
        self.step = 2.0**-frac_bits
        self.summary = f"fixed point, {int_bits} integer bits (with sign) and {frac_bits} fraction bits"

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        return {}

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        qmin, qmax = int_range(self.bits, signed=True)
        return quantize_affine(x, torch.tensor(self.step), 0, qmin, qmax, scheme.rounding, generator)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        return codes.float() * self.step

    def inside(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        qmin, qmax = int_range(self.bits, signed=True)
        raw = torch.round(x * (1.0 / self.step))
        return (raw >= qmin) & (raw <= qmax)

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = int_range(self.bits, signed=True)
        return torch.tensor(qmin * self.step), torch.tensor(qmax * self.step)


@register_family(
    r"q([0-9]{1,4})\.([0-9]{1,4})", ("q4.4", "q1.7", "q8.8"), "fixed point Qm.n, m integer bits with sign, m+n <= 16"
)
def _fixed_point(match: re.Match[str]) -> Format:
    return FixedPointFormat(int(match.group(1)), int(match.group(2)))
