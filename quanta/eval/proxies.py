"""Cheap predictors of how much quantizing one layer hurts: weight SQNR, two Hessian forms, an input outlier ratio.

For a Linear layer with calibration inputs ``X`` (n rows, d_in features; a Conv's im2col patches), the layer-wise
loss ``(1/n) ||X (W - W_q)^T||^2`` has, for every output row, the Hessian ``H = 2 X^T X / n`` (d_in, d_in). Its
diagonal ``H_jj = 2 E[x_j^2]`` is computed exactly from the inputs, so no Hutchinson (random-probe) estimate is
needed. With ``dW = W - W_q`` the weight error of the candidate:

* ``hessian_trace`` (HAWQ-V2): ``tr(H_full) / n_params * ||dW||_F^2``, the mean Hessian eigenvalue times the
  squared perturbation (``H_full`` is ``H`` repeated for every output row, so ``tr(H_full) / n_params`` is
  ``tr(H) / d_in``);
* ``hessian_diag``: ``1/2 sum_rj H_jj dW_rj^2 = sum_rj E[x_j^2] dW_rj^2``, the diagonal part of the exact
  quadratic ``1/2 sum_r dW_r H dW_r^T`` (which equals the mean squared output error of the layer);
* ``weight_sqnr_db``: ``10 log10(||W||^2 / ||dW||^2)`` (high is good, the others: high is bad);
* ``outlier_ratio``: ``max |x| / rms(x)`` over all of the layer's calibration inputs (a peak-to-RMS ratio).

The Hessian forms exist for Linear, Conv1d and Conv2d layers (any groups, stride, dilation, padding); other
layers get ``None`` there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta import calib as calib_module
from quanta.nn.base import QuantModule
from quanta.primitives.metrics import sqnr_db

__all__ = ["PROXIES", "InputStats", "input_stats", "layer_proxies"]

# Each proxy's direction: +1 when a larger value predicts more damage, -1 when it predicts less.
PROXIES: dict[str, int] = {"weight_sqnr_db": -1, "hessian_trace": 1, "hessian_diag": 1, "outlier_ratio": 1}


@dataclass
class InputStats:
    """Sums over one layer's calibration inputs (float64, so the batching does not change them).

    ``sq_sum[j]`` is ``sum over rows of x_j^2`` for the layer's input features (im2col order for a conv), ``rows``
    the number of rows ``n`` (tokens, or images times output positions); both ``None``/0 for layers without a
    Hessian form. ``peak``, ``energy`` and ``count`` are ``max |x|``, ``sum x^2`` and the number of elements.
    """

    sq_sum: torch.Tensor | None = None
    rows: int = 0
    peak: float = 0.0
    energy: float = 0.0
    count: int = 0
    calls: int = field(default=0, repr=False)

    def hessian_diag(self) -> torch.Tensor | None:
        """``diag(H) = 2 sum x_j^2 / n``, (features,), or ``None``."""
        return None if self.sq_sum is None or self.rows == 0 else 2.0 * self.sq_sum / self.rows

    def outlier_ratio(self) -> float | None:
        """``max |x| / rms(x)``, ``None`` when the inputs are all zero or never seen."""
        if self.count == 0 or self.energy == 0.0:
            return None
        return self.peak / math.sqrt(self.energy / self.count)


def _conv_sq_sums(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """``sum over rows of x_j^2`` of the im2col matrix of ``conv`` on ``x``, without building it: each kernel
    offset reads a strided window of the padded input, and summing the squares of that window sums one column."""
    x = x.detach().double()
    # (left, right, top, bottom), torch's own, also for padding='same'; quanta's convs take only zero padding
    sq = F.pad(x * x, conv._reversed_padding_repeated_twice)
    kernel, stride, dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
    out: tuple[int, ...] = tuple(out_shape[-2:])
    if isinstance(conv, nn.Conv1d):  # a 1-d conv is a 2-d one of height 1
        sq, out = sq.unsqueeze(2), (1, out_shape[-1])
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    sums = torch.empty(sq.shape[1], kernel[0], kernel[1], dtype=torch.float64)  # (C, kh, kw)
    for i in range(kernel[0]):
        rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out[0] - 1) + 1, stride[0])
        for j in range(kernel[1]):
            cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out[1] - 1) + 1, stride[1])
            sums[:, i, j] = sq[:, :, rows, cols].sum(dim=(0, 2, 3))
    return sums.reshape(-1)  # (C * kh * kw,): the order of weight.flatten(1) within a group


def _update(stats: InputStats, module: nn.Module, x: torch.Tensor, output: Any) -> None:
    flat = x.detach().double()
    stats.peak = max(stats.peak, float(flat.abs().max())) if flat.numel() else stats.peak
    stats.energy += float((flat * flat).sum())
    stats.count += flat.numel()
    stats.calls += 1
    if isinstance(module, nn.Linear):
        rows = flat.reshape(-1, flat.shape[-1])  # (n, d_in)
        sq, n = (rows * rows).sum(dim=0), rows.shape[0]
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and isinstance(output, torch.Tensor):
        sq, n = _conv_sq_sums(module, x, output.shape), math.prod(output.shape[:1] + output.shape[2:])
    else:
        return
    stats.sq_sum = sq if stats.sq_sum is None else stats.sq_sum + sq
    stats.rows += int(n)


def input_stats(model: nn.Module, names: Sequence[str], calib: Iterable[Any]) -> dict[str, InputStats]:
    """Run ``calib`` through ``model`` once and gather :class:`InputStats` for each module in ``names``.

    Raises:
        QuantaError: empty calibration data, or a step that does not fit the model.
    """
    stats = {name: InputStats() for name in names}
    handles = []
    for name in names:

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any, s: InputStats = stats[name]) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                _update(s, module, args[0], output)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        calib_module.run(model, calib)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _row_hessian(module: nn.Module, diag: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``diag(H)`` laid out like ``weight.flatten(1)``: (out, features of the row's group)."""
    if isinstance(module, nn.Linear):
        return diag.expand(rows, -1)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        per_group = diag.view(module.groups, -1)  # (groups, C_in / groups * k)
        return per_group.repeat_interleave(rows // module.groups, dim=0)
    return None


def layer_proxies(float_module: nn.Module, packed: QuantModule, stats: InputStats | None) -> dict[str, float | None]:
    """The :data:`PROXIES` of one layer: ``float_module`` against its packed twin, with its input statistics.

    Returns:
        ``{proxy name: value}``; a proxy that does not apply (no Hessian form, no inputs seen) is ``None``.
    """
    ref, err = [], []
    for name, qt in packed.qweights.items():
        weight = type(packed).float_weight(float_module, name)
        if not isinstance(weight, torch.Tensor):
            continue
        w = weight.detach().double()
        ref.append(w)
        err.append(w - qt.dequantize().double().reshape(w.shape))
    sqnr = None
    if ref:  # every packed weight together (an LSTM has several), as quanta.eval.layer_errors reports it
        flat_ref = torch.cat([r.reshape(-1) for r in ref])
        sqnr = sqnr_db(flat_ref, flat_ref - torch.cat([e.reshape(-1) for e in err]))
    trace = diag_form = None
    h = None if stats is None else stats.hessian_diag()
    if h is not None and len(err) == 1 and set(packed.qweights) == {"weight"}:
        dw = err[0].reshape(err[0].shape[0], -1)  # (out, features)
        h_rows = _row_hessian(float_module, h, dw.shape[0])
        if h_rows is not None and h_rows.shape == dw.shape:
            sq = dw * dw
            trace = float(h_rows.sum() / h_rows.numel() * sq.sum())
            diag_form = float(0.5 * (h_rows * sq).sum())
    outlier = None if stats is None else stats.outlier_ratio()
    return {"weight_sqnr_db": sqnr, "hessian_trace": trace, "hessian_diag": diag_form, "outlier_ratio": outlier}
