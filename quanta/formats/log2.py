"""Power-of-two (logarithmic) levels: ``potN`` = sign bit + (N-1)-bit exponent code, with a code for zero.

With ``K = 2**(N-1) - 1`` the magnitude code ``m`` means

* ``m = 0``: the value 0 (the canonical zero has the sign bit clear);
* ``m = 1 .. K``: ``scale * 2**(m - K)``, i.e. ``scale * {2**(1-K), ..., 1/2, 1}``;

and the sign bit (the code's top bit) negates the value. ``scale`` is the group's ``absmax``, so the largest
level is exact. ``pot4`` has levels ``0, ±2**-6 .. ±1`` times the scale. Rounding picks the nearest level in the
linear domain (the boundary between ``2**e`` and ``2**(e+1)`` is ``1.5 * 2**e``; values below half the smallest
level become 0). Multiplying by a level is a shift plus one scale multiply.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import AbsmaxScaled, Format, Params, register_family
from quanta.primitives.checks import check_bits

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class PowerOfTwoFormat(AbsmaxScaled):
    def __init__(self, bits: int) -> None:
        # Beyond 8 bits the smallest level 2**(1-K) underflows fp32.
        self.bits = check_bits(bits, 2, 8, what="power-of-two bit width")
        self.name = f"pot{bits}"
        self.max_code = (1 << (bits - 1)) - 1
        self.summary = f"sign + {bits - 1}-bit exponent, levels ±scale * 2^-k, k = 0..{self.max_code - 1}, and 0"

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        r = x.abs() / params["scale"].unsqueeze(-1).float()
        mantissa, exponent = torch.frexp(r)  # r = mantissa * 2**exponent, mantissa in [0.5, 1)
        e = exponent - 1 + (mantissa >= 0.75).to(exponent.dtype)  # nearest power of two in linear distance
        m = (e + self.max_code).clamp(1, self.max_code)
        smallest = 2.0 ** (1 - self.max_code)
        m = torch.where(r < smallest / 2, torch.zeros_like(m), m).to(torch.int32)
        sign = ((x < 0) & (m > 0)).to(torch.int32) << (self.bits - 1)
        return sign | m

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        m = codes & self.max_code
        negative = (codes >> (self.bits - 1)) & 1
        mag = torch.where(m > 0, torch.ldexp(torch.ones_like(m, dtype=torch.float32), m - self.max_code), 0.0)
        return torch.where(negative == 1, -mag, mag) * params["scale"].unsqueeze(-1).float()


@register_family(r"pot([0-9]{1,4})", ("pot3", "pot4", "pot5"), "power-of-two levels with sign and zero, 2..8 bits")
def _pot(match: re.Match[str]) -> Format:
    return PowerOfTwoFormat(int(match.group(1)))
