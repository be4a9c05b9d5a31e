"""Binary weights: ``{-a, +a}`` with ``a = mean |x|`` per group (XNOR-Net's optimal scale for sign weights).

Code 1 means ``+a`` (x >= 0), code 0 means ``-a``; codes pack at 1 bit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_scale

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class BinaryFormat(Format):
    name = "binary"
    bits = 1
    summary = "sign with a per-group scale a = mean|x| (XNOR-Net)"

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"scale": ((), SCALE_DTYPES[scheme.scale_dtype])}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        return {"scale": storage_scale(x.abs().mean(-1), SCALE_DTYPES[scheme.scale_dtype], keep_zero=True)}

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        return (x >= 0).to(torch.int32)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        return (2 * codes - 1).float() * params["scale"].unsqueeze(-1).float()


@register_family(r"binary", ("binary",), "1-bit sign times mean|x| per group")
def _binary(match: re.Match[str]) -> Format:
    return BinaryFormat()
