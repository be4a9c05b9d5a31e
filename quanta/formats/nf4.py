"""NF4 (QLoRA's 4-bit NormalFloat): 16 levels at quantiles of the standard normal, scaled by the group absmax.

The levels are built here from normal quantiles (``torch.special.ndtri``), the QLoRA construction: 8 positive
quantiles at ``linspace(offset, 0.5, 9)[:-1]`` and 7 negative ones at ``linspace(offset, 0.5, 8)[:-1]`` with
``offset = 0.9677083`` (the midpoint of the last quantile steps for 15 and 16 levels), plus an exact zero,
normalised to ``[-1, 1]``. They match the published table within 1e-7. Code ``i`` is the ``i``-th smallest level;
code 7 is 0.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import AbsmaxScaled, Format, Params, register_family
from quanta.primitives.lloyd import nearest_level

if TYPE_CHECKING:
    from quanta.scheme import QScheme

NF4_OFFSET = 0.9677083


@lru_cache(maxsize=1)
def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels in ascending order, fp32, from -1 to 1."""
    # The probabilities are spaced in fp32, as in the QLoRA construction; the quantiles are taken in fp64.
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double())
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.max()).float()


class NF4Format(AbsmaxScaled):
    name = "nf4"
    bits = 4
    summary = "4-bit NormalFloat (QLoRA): normal quantiles times absmax"

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        return nearest_level(x / params["scale"].unsqueeze(-1).float(), nf4_levels().to(x.device))

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        return nf4_levels().to(codes.device)[codes.long()] * params["scale"].unsqueeze(-1).float()


@register_family(r"nf4", ("nf4",), "4-bit NormalFloat, absmax-scaled normal quantiles")
def _nf4(match: re.Match[str]) -> Format:
    return NF4Format()
