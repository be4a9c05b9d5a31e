"""Binary values: ``{-a, +a}`` with ``a = mean |x|`` per group (XNOR-Net's optimal scale for sign weights).

Code 1 means ``+a`` (x >= 0), code 0 means ``-a``; codes pack at 1 bit.

Mode ``fmin`` (``binary:fmin``) places the two levels anywhere: ``offset + q * scale``, ``q`` in {0, 1}, fitted by
one Lloyd-Max step from the mean: values below the group mean average to the lower level (``offset``), values at or
above it to the upper one (``offset + scale``); a value is coded 1 at or above the midpoint. For inputs that are not
centred on zero, such as the non-negative outputs of a ReLU, sign levels ``+-a`` would code every value alike; two
fitted levels keep one bit of information (binarized-activation networks on ReLU layers).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_param, storage_scale

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class BinaryFormat(Format):
    name = "binary"
    bits = 1
    modes = ("sym", "fmin")
    summary = "sign with a per-group scale a = mean|x| (XNOR-Net); fmin: two fitted levels offset + {0, scale}"

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        return {"scale": ((), dtype), "offset": ((), dtype)} if scheme.mode == "fmin" else {"scale": ((), dtype)}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        if scheme.mode != "fmin":
            return {"scale": storage_scale(x.abs().mean(-1), dtype, keep_zero=True)}
        upper = x >= x.mean(-1, keepdim=True)
        count_upper = upper.sum(-1)
        count_lower = (~upper).sum(-1)
        high = torch.where(upper, x, 0.0).sum(-1) / count_upper.clamp(min=1)
        low = torch.where(upper, 0.0, x).sum(-1) / count_lower.clamp(min=1)
        low = torch.where(count_lower > 0, low, high)  # a constant group: both levels on its value
        offset = storage_param(low, dtype, "offset")
        return {"scale": storage_scale(high - offset.float(), dtype, keep_zero=True), "offset": offset}

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        if scheme.mode != "fmin":
            return (x >= 0).to(torch.int32)
        offset, scale = params["offset"].unsqueeze(-1).float(), params["scale"].unsqueeze(-1).float()
        return (x >= offset + scale / 2).to(torch.int32)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        if scheme.mode != "fmin":
            return (2 * codes - 1).float() * params["scale"].unsqueeze(-1).float()
        return params["offset"].unsqueeze(-1).float() + codes.float() * params["scale"].unsqueeze(-1).float()


@register_family(r"binary", ("binary",), "1-bit sign times mean|x| per group")
def _binary(match: re.Match[str]) -> Format:
    return BinaryFormat()
