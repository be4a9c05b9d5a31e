"""Ternary weights (TWN): ``{-a, 0, +a}`` per group.

Values with ``|x| > delta``, ``delta = 0.7 * mean |x|``, keep their sign; the rest become 0. The scale ``a`` is the
mean of the kept ``|x|``, the least-squares optimum for that support (Li & Liu, Ternary Weight Networks).
Codes are the signed values -1, 0, +1 packed at 2 bits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_scale

if TYPE_CHECKING:
    from quanta.scheme import QScheme

THRESHOLD_RATIO = 0.7


class TernaryFormat(Format):
    name = "ternary"
    bits = 2
    signed_codes = True
    summary = "{-a, 0, +a} with the TWN threshold 0.7 * mean|x|"

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"scale": ((), SCALE_DTYPES[scheme.scale_dtype])}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        mag = x.abs()
        delta = THRESHOLD_RATIO * mag.mean(-1, keepdim=True)
        kept = mag > delta
        count = kept.sum(-1)
        a = torch.where(count > 0, (mag * kept).sum(-1) / count.clamp(min=1), torch.zeros_like(delta[..., 0]))
        return {"scale": storage_scale(a, SCALE_DTYPES[scheme.scale_dtype], keep_zero=True), "_delta": delta[..., 0]}

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        # Without the fitted threshold (encoding against stored parameters only) pick the nearest of {-a, 0, +a}.
        delta = params["_delta"].unsqueeze(-1) if "_delta" in params else params["scale"].unsqueeze(-1).float() / 2
        return torch.where(x.abs() > delta, torch.sign(x), torch.zeros_like(x)).to(torch.int32)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        return codes.float() * params["scale"].unsqueeze(-1).float()

    def code_values(self, scheme: QScheme) -> torch.Tensor:
        return torch.tensor([-1, 0, 1], dtype=torch.int32)


@register_family(r"ternary", ("ternary",), "2-bit {-a, 0, +a}, TWN threshold")
def _ternary(match: re.Match[str]) -> Format:
    return TernaryFormat()
