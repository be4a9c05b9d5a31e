"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"):
scale the input channels that the activations make important before weight-only quantization.

For each group of linear layers fed by one normalization layer (``quanta.methods.smoothing``), with ``m_j`` the
mean |x_j| of the group's input over the calibration data, the scales are ``s = m^alpha`` (normalised so that
``sqrt(max(s) min(s)) = 1``), and ``alpha`` is searched on a grid of 21 points in [0, 1] to minimise the summed
output error of the group's layers on a sample of calibration rows ``X``::

    sum_layers || X W^T - (X / s) Q(W diag(s))^T ||^2

where ``Q`` is the layer's own weight scheme rounded to nearest (group sizes and all). ``alpha = 0`` is plain RTN,
so the search never does worse than RTN on that sample. The winning scales move into the norm (function-
preserving); the layers are then quantized by the recipe's rounding method, so ``awq_gptq`` runs GPTQ on the
scaled weights. The paper's weight-clipping search is not part of this method yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.errors import UnsupportedError
from quanta.methods.registry import Method, register_method
from quanta.methods.smoothing import Group, apply_scales, find_groups
from quanta.scheme import QScheme

__all__ = ["GRID", "awq_scales"]

GRID = 21  # alpha in 0, 0.05, ..., 1


def _group_error(group: Group, schemes: dict[str, QScheme | None], s: torch.Tensor) -> float:
    assert group.rows is not None
    x = group.rows  # (rows, C)
    error = 0.0
    for name, layer in group.layers.items():
        scheme = schemes[name]
        if scheme is None:
            continue
        w = layer.weight.detach().float()  # (out, C)
        w_hat = quantize_tensor(w * s, scheme).dequantize().float()
        error += float(((x @ w.T) - (x / s) @ w_hat.T).double().pow(2).sum())
    return error


def awq_scales(group: Group, schemes: dict[str, QScheme | None]) -> tuple[torch.Tensor, float]:
    """The searched scales of ``group`` and their ``alpha`` (0.0 with all-ones scales when nothing beats RTN)."""
    assert group.absmean is not None
    m = group.absmean.float().clamp(min=1e-8)
    best = (_group_error(group, schemes, torch.ones_like(m)), 0.0, torch.ones_like(m))
    for k in range(1, GRID):
        alpha = k / (GRID - 1)
        s = m.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        error = _group_error(group, schemes, s)
        if error < best[0]:
            best = (error, alpha, s)
    return best[2], best[1]


def _check(scheme: QScheme) -> str | None:
    if not scheme.is_integer:
        return f"awq searches scales for integer weight grids; {scheme} is not one"
    return None


def _transform(model: nn.Module, schemes: dict[str, QScheme | None], steps: list[Any]) -> None:
    groups = find_groups(model, schemes, steps, keep_rows=True)
    scales = {}
    for group in groups:
        if group.rows is None:
            raise UnsupportedError(f"awq: no calibration rows reached {group.norm_name}'s layers.")
        s, alpha = awq_scales(group, schemes)
        if alpha > 0:
            scales[group.norm_name] = s
    apply_scales(model, scales, groups, steps[0])


register_method(
    Method(
        "awq",
        "transform",
        "AWQ: activation-aware per-channel scales searched per norm-fed group, moved into the norm",
        needs_data=True,
        transform=_transform,
        check=_check,
    )
)
