"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models"): move activation outliers into the weights before W8A8 quantization.

Per input channel ``j`` of a group of linear layers fed by one normalization layer (``quanta.methods.smoothing``)::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

with ``max|W_j|`` taken over column ``j`` of every layer in the group, and ``alpha = 0.5`` (the paper's default for
most models). Dividing the norm's output by ``s`` and multiplying the columns by ``s`` preserves the function; the
activations' per-tensor range then no longer follows a few outlier channels. Channels that never activate keep
``s = 1``. Layers that no norm feeds (attention output, MLP down projection) are left as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quanta.methods.registry import Method, TransformTarget, register_method
from quanta.methods.smoothing import apply_scales, find_groups

__all__ = ["ALPHA", "smoothquant_scales"]

ALPHA = 0.5
_LIMIT = 1e4  # s is kept within [1 / _LIMIT, _LIMIT]: a dead or huge channel must not blow up the weights


def smoothquant_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """``s = act^alpha / weight^(1 - alpha)`` per channel, 1 where either is zero.

    Example:
        >>> smoothquant_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]))
        tensor([4.0000, 0.5000, 1.0000])
    """
    act, weight = act_absmax.double(), weight_absmax.double()
    s = act.pow(alpha) / weight.pow(1 - alpha)
    valid = (act > 0) & (weight > 0) & torch.isfinite(s)
    return torch.where(valid, s, torch.ones_like(s)).clamp(1 / _LIMIT, _LIMIT).float()


def _transform(model: nn.Module, targets: dict[str, TransformTarget], steps: list[Any]) -> None:
    groups = find_groups(model, targets, steps)
    scales = {}
    for group in groups:
        assert group.absmax is not None
        columns = torch.stack([layer.weight.detach().abs().amax(dim=0).float() for layer in group.layers.values()])
        scales[group.norm_name] = smoothquant_scales(group.absmax, columns.amax(dim=0))
    apply_scales(model, scales, groups, steps[0])


register_method(
    Method(
        "smoothquant",
        "transform",
        "SmoothQuant: activation outliers migrated into the weights (alpha 0.5) through the norm feeding them",
        needs_data=True,
        transform=_transform,
    )
)
