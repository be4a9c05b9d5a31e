"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"):
scale the input channels that the activations make important before weight-only quantization.

For each group of linear layers fed by one normalization layer (``quanta.methods.smoothing``), with ``m_j`` the
mean |x_j| of the group's input over the calibration data, the scales are ``s = m^alpha`` (normalised so that
``sqrt(max(s) min(s)) = 1``), and ``alpha`` is searched on a grid of 21 points in [0, 1] to minimise the summed
output error of the group's layers on a sample of calibration rows ``X``::

    sum_layers || X W^T - (X / s) Q(W diag(s))^T ||^2

where ``Q`` is the layer's own weight scheme rounded to nearest (group sizes and all). ``alpha = 0`` is plain RTN,
so the search never does worse than RTN on that sample. The winning scales move into the norm (function-
preserving).

Then the weight-clipping search, for every target layer (norm-fed or not): per output row and group of ``g``
columns, the weights are clamped to ``+-r max|w|`` for the ``r`` in 1.0, 0.95, ..., 0.5 that minimises that
row's output error over the group's columns, ``|| X_g w_g - X_g Q(clamp(w_g))||^2`` on sampled calibration rows
of the layer's input (``r = 1`` is no clipping, so it never loses to RTN there either). The clamped weights stay
in the float model for the recipe's rounding method. Layers whose rounding method fits its own grid (``gptq``'s
error-minimising range search) are not clipped: ``awq_gptq`` runs GPTQ on the scaled weights, and clipping twice
measured worse (stories260K W3 g16: 46% of RTN's perplexity increase removed with both, 53% without AWQ's).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quanta import distributed
from quanta.calib import call_step
from quanta.codec import quantize_tensor
from quanta.errors import UnsupportedError
from quanta.methods.registry import Method, TransformTarget, register_method
from quanta.methods.smoothing import MAX_ROWS, Group, apply_scales, find_groups, pick_rows
from quanta.scheme import QScheme

__all__ = ["CLIP_RATIOS", "GRID", "awq_scales", "clip_weight"]

GRID = 21  # alpha in 0, 0.05, ..., 1
CLIP_RATIOS = tuple(1.0 - 0.05 * k for k in range(11))  # 1.0, 0.95, ..., 0.5


def _group_error(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor, QScheme]], s: torch.Tensor) -> float:
    """Summed output error of the group's layers with scales ``s``; ``layers`` holds each layer's float weight
    ``(out, C)``, its float output on the sample rows ``x @ w.T`` (the same for every ``s``) and its scheme."""
    error = 0.0
    for w, target, scheme in layers:
        w_hat = quantize_tensor(w * s, scheme).dequantize().float()
        error += float((target - (x / s) @ w_hat.T).double().pow(2).sum())
    return error


def awq_scales(group: Group, schemes: dict[str, QScheme | None]) -> tuple[torch.Tensor, float]:
    """The searched scales of ``group`` and their ``alpha`` (0.0 with all-ones scales when nothing beats RTN)."""
    assert group.absmean is not None
    assert group.rows is not None
    m = group.absmean.float().clamp(min=1e-8)
    x = group.rows  # (rows, C)
    layers = []
    for name, layer in group.layers.items():
        scheme = schemes[name]
        if scheme is not None:
            w = layer.weight.detach().float()  # (out, C)
            layers.append((w, x @ w.T, scheme))
    best = (_group_error(x, layers, torch.ones_like(m)), 0.0, torch.ones_like(m))
    for k in range(1, GRID):
        alpha = k / (GRID - 1)
        s = m.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        error = _group_error(x, layers, s)
        if error < best[0]:
            best = (error, alpha, s)
    return best[2], best[1]


def _group_width(scheme: QScheme, columns: int) -> int:
    """Columns per group of the scheme along a row (a whole row for per-channel or per-tensor schemes)."""
    size = scheme.group_size
    return columns if size is None or size <= 0 or size >= columns else size


def clip_weight(weight: torch.Tensor, x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, C) with each row's groups clamped to the searched ``+-r max|w|``, and the chosen ``r``
    per (row, group) as a tensor ``(out, groups)``; ``x`` (rows, C) are the layer's sampled inputs."""
    w = weight.detach().float()
    out, columns = w.shape
    width = _group_width(scheme, columns)
    clipped, chosen = w.clone(), []
    for start in range(0, columns, width):
        w_g, x_g = w[:, start : start + width], x[:, start : start + width]  # (out, g), (rows, g)
        target = x_g @ w_g.T  # (rows, out)
        peak = w_g.abs().amax(dim=1, keepdim=True)  # (out, 1)
        best_err = torch.full((out,), float("inf"), dtype=torch.float64)
        best_r = torch.ones(out)
        best_w = w_g
        for r in CLIP_RATIOS:
            limit = peak * r
            candidate = torch.maximum(torch.minimum(w_g, limit), -limit)
            # One group per row of this slice (a ragged last one too): the scheme's own rounding of these columns.
            w_hat = quantize_tensor(candidate, scheme).dequantize().float()
            err = ((x_g @ w_hat.T) - target).double().pow(2).sum(dim=0)  # (out,)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_r = torch.where(better, torch.full_like(best_r, r), best_r)
            best_w = torch.where(better[:, None], candidate, best_w)
        clipped[:, start : start + width] = best_w
        chosen.append(best_r)
    return clipped.to(weight.dtype), torch.stack(chosen, dim=1)


def _layer_rows(model: nn.Module, layers: dict[str, nn.Linear], steps: list[Any]) -> dict[str, torch.Tensor]:
    """A seeded sample of up to MAX_ROWS input rows of each layer over the calibration steps: each step's rows
    drawn with a generator seeded by its global index, gathered in step order across processes (so the sample is
    the same on any number of ranks under :func:`quanta.distributed.across`), then a seeded final pick."""
    first, _, _ = distributed.step_range(len(steps))
    generator = torch.Generator()
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name, layer in layers.items():

        def observe(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            rows[name].append(x[torch.randperm(x.shape[0], generator=generator)[:MAX_ROWS]])

        handles.append(layer.register_forward_pre_hook(observe))
    try:
        with torch.no_grad():
            for index, step in enumerate(steps):
                generator.manual_seed(1_000_003 + first + index)
                call_step(model, step, index)
    finally:
        for handle in handles:
            handle.remove()
    pick = torch.Generator().manual_seed(1)
    out = {}
    for name, parts in rows.items():
        x = pick_rows(parts, layers[name].in_features, pick)
        if x.shape[0]:
            out[name] = x
    return out


def _clip(model: nn.Module, schemes: dict[str, QScheme | None], steps: list[Any]) -> None:
    layers = {n: m for n, m in model.named_modules() if schemes.get(n) is not None and isinstance(m, nn.Linear)}
    for name, x in _layer_rows(model, layers, steps).items():
        scheme = schemes[name]
        assert scheme is not None
        clipped, _ = clip_weight(layers[name].weight, x, scheme)
        with torch.no_grad():
            layers[name].weight.copy_(clipped)


def _check(scheme: QScheme) -> str | None:
    if not scheme.is_integer:
        return f"awq searches scales for integer weight grids; {scheme} is not one"
    return None


def _transform(model: nn.Module, targets: dict[str, TransformTarget], steps: list[Any]) -> None:
    schemes = {name: target.scheme for name, target in targets.items()}
    groups = find_groups(model, schemes, steps, keep_rows=True)
    scales = {}
    for group in groups:
        if group.rows is None:
            raise UnsupportedError(f"awq: no calibration rows reached {group.norm_name}'s layers.")
        s, alpha = awq_scales(group, schemes)
        if alpha > 0:
            scales[group.norm_name] = s
    apply_scales(model, scales, groups, steps[0])
    # Clipping for the layers whose rounding keeps a min/max grid; gptq searches its own grid per group.
    _clip(model, {n: t.scheme for n, t in targets.items() if not t.rounding.fits_grid}, steps)


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
