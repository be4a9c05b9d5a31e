"""Small floats scaled by the group absmax: FP8 (e4m3 as OCP's e4m3fn, e5m2), FP6 (e2m3, e3m2), FP4 (e2m1).

``scale = absmax / max_finite``, then each value is rounded to nearest-even on the format's grid with
saturation. Codes are the format's bit patterns (sign, exponent, mantissa): for FP8 they are exactly the bytes of
torch's ``float8_e4m3fn`` / ``float8_e5m2`` tensors, so a QTensor's codes can be viewed as a torch float8 tensor.

| format | exp/man bits | bias | largest | smallest subnormal |
|---|---|---|---|---|
| fp8_e4m3 | 4/3 | 7 | 448 | 2^-9 |
| fp8_e5m2 | 5/2 | 15 | 57344 | 2^-16 |
| fp6_e3m2 | 3/2 | 3 | 28 | 2^-4 |
| fp6_e2m3 | 2/3 | 1 | 7.5 | 2^-3 |
| fp4_e2m1 | 2/1 | 1 | 6 | 0.5 |
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import AbsmaxScaled, Format, Params, register_family
from quanta.primitives.minifloat import MiniFloat

if TYPE_CHECKING:
    from quanta.scheme import QScheme

# Formats torch can cast to: the same round-to-nearest-even (tests check it byte for byte), in one fused pass.
TORCH_DTYPES: dict[str, torch.dtype] = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}

MINIFLOATS: dict[str, MiniFloat] = {
    "fp8_e4m3": MiniFloat(exp_bits=4, man_bits=3, bias=7, max_value=448.0),
    "fp8_e5m2": MiniFloat(exp_bits=5, man_bits=2, bias=15, max_value=57344.0),
    "fp6_e3m2": MiniFloat(exp_bits=3, man_bits=2, bias=3, max_value=28.0),
    "fp6_e2m3": MiniFloat(exp_bits=2, man_bits=3, bias=1, max_value=7.5),
    "fp4_e2m1": MiniFloat(exp_bits=2, man_bits=1, bias=1, max_value=6.0),
}


class MiniFloatFormat(AbsmaxScaled):
    roundings = ("rne", "sr")

    def __init__(self, name: str) -> None:
        self.name = name
        self.spec = MINIFLOATS[name]
        self.bits = self.spec.bits
        self.max_level = self.spec.max_value
        self.summary = f"{self.bits}-bit float, {self.spec.exp_bits} exponent and {self.spec.man_bits} mantissa bits"

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        inv = 1.0 / params["scale"].unsqueeze(-1).float()
        dtype = TORCH_DTYPES.get(self.name)
        if dtype is not None and scheme.rounding == "rne":
            # Clamp first: torch's cast does not saturate for every dtype (e5m2 overflows to inf).
            top = self.spec.max_value
            return (x * inv).clamp_(-top, top).to(dtype).view(torch.uint8)
        return self.spec.encode(x * inv, scheme.rounding, generator)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        dtype = TORCH_DTYPES.get(self.name)
        # The table lookup makes a new tensor too, so scaling in place below is safe on either path.
        values = codes.to(torch.uint8).view(dtype).float() if dtype is not None else self.spec.decode(codes)
        return values.mul_(params["scale"].unsqueeze(-1).float())

    def code_values(self, scheme: QScheme) -> torch.Tensor:
        return torch.isfinite(self.spec.table).nonzero().reshape(-1).to(torch.int32)  # NaN/Inf codes are never made

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        top = params["scale"].unsqueeze(-1).float() * self.spec.max_value
        return -top, top


@register_family(
    r"fp8_e4m3|fp8_e5m2|fp6_e3m2|fp6_e2m3|fp4_e2m1",
    tuple(MINIFLOATS),
    "small floats (OCP FP8/FP6/FP4) with an absmax scale",
)
def _minifloat(match: re.Match[str]) -> Format:
    return MiniFloatFormat(match.group(0))
