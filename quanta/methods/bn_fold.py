"""BatchNorm folding: merge an inference-mode BatchNorm into the convolution or linear layer that feeds it.

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` is the layer ``W' x + b'`` with
``W' = W * gamma / sqrt(var + eps)`` (per output channel) and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
Folding before quantization lets the quantizer see the weights the hardware will use.

Without tracing, which layer feeds which BatchNorm is read from the module tree: a BatchNorm registered right
after a Conv/Linear with as many channels, in the same parent (``Sequential`` layers, or ResNet's ``conv1``/``bn1``
pairs). Pass ``example_inputs`` to check the model's output is unchanged; a mismatch undoes the folding and raises.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["batchnorm_pairs", "fold_batchnorm"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    assert isinstance(layer, _LAYERS) and isinstance(bn, _NORMS)
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        factor = gamma / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def _channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels  # type: ignore[return-value]


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, BatchNorm name)`` for every BatchNorm (tracking running statistics) registered right after a
    Conv/Linear layer with as many channels, in the same parent."""
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        for (name_a, a), (name_b, b) in itertools.pairwise(list(parent.named_children())):
            norm = isinstance(b, _NORMS) and b.track_running_stats
            if isinstance(a, _LAYERS) and norm and _channels(a) == b.num_features:
                pairs.append((prefix + name_a, prefix + name_b))
    return pairs


def fold_batchnorm(model: nn.Module, example_inputs: Any = None, atol: float = 1e-4) -> list[tuple[str, str]]:
    """Fold every inference BatchNorm into the layer registered just before it; the BatchNorm becomes Identity.

    Args:
        model: the model, in eval mode (BatchNorm running statistics are used).
        example_inputs: optional input (tensor or tuple) to check the outputs stay the same.
        atol: tolerance of that check, relative to the output's largest magnitude.

    Returns:
        The folded ``(layer name, batchnorm name)`` pairs.

    Raises:
        QuantaError: the model is in training mode, or the check fails (the model is restored first).
    """
    if model.training:
        raise QuantaError("fold_batchnorm needs model.eval(): folding uses BatchNorm's running statistics.")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        before = model(*args) if example_inputs is not None else None
    pairs: list[tuple[str, str]] = []
    undo: list[tuple[str, nn.Module, str, nn.Module]] = []  # (layer name, layer as it was, bn name, bn)
    for layer_name, bn_name in batchnorm_pairs(model):
        a, b = model.get_submodule(layer_name), model.get_submodule(bn_name)
        undo.append((layer_name, copy.deepcopy(a), bn_name, b))
        _fold_pair(a, b)
        model.set_submodule(bn_name, nn.Identity())
        pairs.append((layer_name, bn_name))
    if before is not None:
        with torch.no_grad():
            after = model(*args)
        if not torch.allclose(after, before, atol=atol * float(before.abs().max()), rtol=0):
            for layer_name, layer, bn_name, bn in undo:
                model.set_submodule(layer_name, layer)
                model.set_submodule(bn_name, bn)
            raise QuantaError(
                "folding BatchNorm changed the model's output: a BatchNorm registered after a layer is not fed by "
                f"it in this model. The model was restored; the pairs tried were {pairs}."
            )
    return pairs
