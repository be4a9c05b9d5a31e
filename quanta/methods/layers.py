"""The matrix view of a weight layer that the data-aware methods share.

A Conv or Linear layer computes, for each output position, ``y = W x + b`` with ``W`` the ``(out, K)`` weight
matrix (``K = in_features``, or ``in_channels / groups * kernel`` for a convolution) and ``x`` one input vector
(an unfolded patch for a convolution). AdaRound's loss and bias correction both work on that view, so a method
never needs to know which layer type it is looking at beyond this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import UnsupportedError

__all__ = ["WEIGHT_LAYERS", "channel_dim", "has_matrix_view", "input_vectors", "output_channels", "weight_matrix"]

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def output_channels(layer: nn.Module) -> int:
    """Output channels (Conv) or features (Linear)."""
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)  # type: ignore[arg-type]


def input_channels(layer: nn.Module) -> int:
    """Input channels (Conv) or features (Linear)."""
    return int(layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)  # type: ignore[arg-type]


def channel_dim(layer: nn.Module, output: torch.Tensor) -> int:
    """The dimension of ``output`` that indexes output channels: last for Linear, 1 for a convolution."""
    return output.dim() - 1 if isinstance(layer, nn.Linear) else 1


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as the ``(out, K)`` matrix it applies to each input vector (a view)."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.reshape(weight.shape[0], -1)


def has_matrix_view(layer: nn.Module) -> bool:
    """Whether :func:`input_vectors` handles ``layer``: Linear, or an ungrouped Conv with numeric zero padding."""
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, (nn.Conv1d, nn.Conv2d))
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def input_vectors(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors ``(rows, K)`` the weight matrix multiplies, for a layer input ``x``.

    Linear: every leading position is a row. Conv1d/Conv2d: every output position's receptive field,
    unfolded with the layer's padding, stride and dilation (zero padding is part of what the layer sees).

    Raises:
        UnsupportedError: grouped convolutions (each group sees other inputs) and non-zero padding modes.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if not has_matrix_view(layer):
        raise UnsupportedError(
            f"{type(layer).__name__}: only Linear layers and ungrouped convolutions with numeric zero padding "
            "are supported by the data-aware methods; use rtn for this layer."
        )
    conv = layer
    assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
    lead: tuple[int, ...] = ()
    if isinstance(conv, nn.Conv1d):  # treat (n, C, L) as a (n, C, 1, L) image with a (1, k) kernel
        x, lead = x.unsqueeze(2), (1,)
    kernel = (*lead, *conv.kernel_size)
    padding = (*[0] * len(lead), *conv.padding)  # numeric: checked above
    stride, dilation = (*lead, *conv.stride), (*lead, *conv.dilation)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (n, K, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
