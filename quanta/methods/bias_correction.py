"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2, empirical variant).

Quantization error is not zero-mean per output channel: ``E[y_q - y] = E[(W_q - W) x]`` shifts every output of
channel ``c`` by the same amount, and the shift adds up through the network. Estimating it on calibration data
and subtracting it from the bias removes that part of the error for free at inference.

The estimate runs layer by layer through the *quantized* model, with the layers before already corrected: each
layer sees the inputs it will see at inference (upstream rounding and ReLU clipping move ``E[x]``; an estimate
from the float model's inputs would be off by ``(W_q - W)(E[x_q] - E[x])``). The error is measured as
``quantized_layer(x) - float_layer(x)`` on the same input ``x``, so it also covers the bias that a statically
quantized input (W4A8) adds; for weights alone it is exactly ``E[(W_q - W) x]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from quanta import calib as calib_module
from quanta.errors import QuantaError
from quanta.methods.layers import WEIGHT_LAYERS
from quanta.methods.registry import Method, register_method

__all__ = ["correct_bias", "execution_order"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer being corrected has been seen."""


def execution_order(model: nn.Module, names: Sequence[str], calib: list[Any]) -> list[str]:
    """``names`` in the order their modules first run on the first calibration step (unreached ones last)."""
    modules = dict(model.named_modules())
    seen: list[str] = []
    handles = []
    for name in names:

        def hook(_m: nn.Module, _args: object, name: str = name) -> None:
            if name not in seen:
                seen.append(name)

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        calib_module.run(model, calib[:1])
    finally:
        for handle in handles:
            handle.remove()
    return seen + [n for n in names if n not in seen]


def _mean_error(model: nn.Module, name: str, float_layer: nn.Module, calib: list[Any]) -> torch.Tensor | None:
    """Mean of ``quantized(x) - float(x)`` per output channel over the calibration data, or ``None`` if unreached."""
    layer = dict(model.named_modules())[name]
    total: list[torch.Tensor] = []
    count = [0]

    def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        diff = (out - float_layer(args[0])).double()  # (n, out, ...) or (..., out)
        dim = diff.dim() - 1 if isinstance(float_layer, nn.Linear) else 1
        per_channel = diff.movedim(dim, -1).reshape(-1, diff.shape[dim])
        total.append(per_channel.sum(0))
        count[0] += per_channel.shape[0]
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for item in calib:
                # The hook ends the pass at this layer (calib.run wraps only TypeError/RuntimeError).
                with contextlib.suppress(_Stop):
                    calib_module.run(model, [item])
    finally:
        handle.remove()
    if not count[0]:
        return None
    return (torch.stack(total).sum(0) / count[0]).float()


def correct_bias(model: nn.Module, float_layers: dict[str, nn.Module], calib: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Subtract each quantized layer's mean output error from its bias, layer by layer in execution order.

    Args:
        model: the quantized model; ``float_layers`` names its quantized layers.
        float_layers: ``{name: the float layer it replaced}`` (Linear or Conv).
        calib: calibration inputs (several passes are made, so it is read into a list).

    Returns:
        ``{name: the correction subtracted}`` for every layer the data reached.

    Raises:
        QuantaError: the calibration data is empty.

    Example:
        >>> import copy, quanta
        >>> f = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> q = quanta.quantize(copy.deepcopy(f), "w4a16")
        >>> sorted(correct_bias(q, {"0": f[0]}, [torch.randn(16, 8)]))
        ['0']
    """
    steps = list(calib)
    if not steps:
        raise QuantaError("bias correction needs calibration data; pass at least one batch of inputs.")
    modules = dict(model.named_modules())
    corrections: dict[str, torch.Tensor] = {}
    for name in execution_order(model, list(float_layers), steps):
        error = _mean_error(model, name, float_layers[name], steps)
        if error is None:
            continue
        layer = modules[name]
        bias = layer.bias
        with torch.no_grad():
            if isinstance(bias, torch.Tensor):
                bias.sub_(error.to(bias.dtype))
            else:  # a layer without a bias gets one (plain attribute ``bias = None`` replaced by a parameter)
                if hasattr(layer, "bias"):
                    delattr(layer, "bias")
                layer.register_parameter("bias", nn.Parameter(-error, requires_grad=False))
        corrections[name] = error
    return corrections


def _correct(model: nn.Module, float_layers: dict[str, nn.Module], calib: list[Any]) -> None:
    correct_bias(model, {n: m for n, m in float_layers.items() if isinstance(m, WEIGHT_LAYERS)}, calib)


register_method(
    Method(
        "bc",
        "correction",
        "empirical bias correction: subtract each layer's mean output error, measured on calibration data",
        needs_data=True,
        correct=_correct,
        layers=WEIGHT_LAYERS,
    )
)
