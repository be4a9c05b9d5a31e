"""Fitted non-uniform codebooks: ``lloydN`` fits 2**N levels per tensor / channel / group by Lloyd-Max.

Each group gets its own sorted codebook ``(rows, n_groups, 2**N)`` minimising the (optionally importance-
weighted) squared error: 1-D k-means, solved exactly per iteration with prefix sums
(:func:`quanta.primitives.lloyd.lloyd_max`). Codes index the codebook; the codebook is stored in the scheme's
scale dtype and counts toward ``nbytes``, so small groups pay a visible overhead: ``lloyd3:g64`` stores 8
fp32 entries per 64 weights, 4 extra bits per weight (2 with ``:sf16``). Per-channel codebooks on long rows
(``lloyd3:ch:sf16`` on 4096 columns: 0.03 extra bits) are where fitted codebooks pay off.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_param
from quanta.primitives.checks import check_bits
from quanta.primitives.lloyd import lloyd_max, nearest_level

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class LloydFormat(Format):
    def __init__(self, bits: int) -> None:
        self.bits = check_bits(bits, 1, 8, what="Lloyd-Max codebook bit width")
        self.name = f"lloyd{bits}"
        self.summary = f"{1 << bits}-level Lloyd-Max (1-D k-means) codebook per group"

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"codebook": ((1 << self.bits,), SCALE_DTYPES[scheme.scale_dtype])}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        levels = lloyd_max(x, 1 << self.bits, weight)
        # Sorting again after the cast keeps the codebook monotone even where fp16/bf16 merges levels.
        return {"codebook": storage_param(levels, SCALE_DTYPES[scheme.scale_dtype], "codebook entry").sort(-1).values}

    def check_params(self, params: Params, scheme: QScheme) -> str | None:
        book = params["codebook"]
        return None if bool((book[..., 1:] >= book[..., :-1]).all()) else "codebook entries must be sorted"

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        return nearest_level(x, params["codebook"].float())

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        return params["codebook"].float().gather(-1, codes.long())

    def levels(self, params: Params, scheme: QScheme) -> torch.Tensor:
        return params["codebook"].float()


@register_family(
    r"lloyd([0-9]{1,4})", ("lloyd2", "lloyd3", "lloyd4"), "fitted Lloyd-Max codebook of 2^N levels, N = 1..8"
)
def _lloyd(match: re.Match[str]) -> Format:
    return LloydFormat(int(match.group(1)))
