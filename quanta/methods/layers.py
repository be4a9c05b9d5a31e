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
from quanta.nn.hf_conv1d import hf_conv1d
from quanta.tensor import QTensor

__all__ = [
    "WEIGHT_LAYERS",
    "channel_dim",
    "check_hessian",
    "has_matrix_view",
    "input_vector_count",
    "input_vectors",
    "linear_view",
    "output_channels",
    "transposed_qtensor",
    "weight_matrix",
]

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
VIEW_OF = "_quanta_view_of"  # set on a linear_view: the Conv1D it stands for


def linear_view(module: nn.Module) -> nn.Linear | None:
    """An ``nn.Linear`` computing what a transformers ``Conv1D`` (GPT-2's ``y = x W + b``, ``W`` stored ``(in,
    out)``) computes, sharing its storage (``weight`` is the transposed view), so the data-aware methods see a
    Linear and their in-place edits (AWQ's scales and clipping) land in the Conv1D; ``None`` for other modules."""
    if hf_conv1d is None or type(module) is not hf_conv1d:
        return None
    weight = module.get_parameter("weight")
    nx, nf = weight.shape
    view = nn.Linear(nx, nf, bias=module._parameters.get("bias") is not None, device="meta")
    view.weight = nn.Parameter(weight.detach().t(), requires_grad=False)
    bias = module._parameters.get("bias")
    if bias is not None:
        view.bias = nn.Parameter(bias.detach(), requires_grad=False)
    view.__dict__[VIEW_OF] = module  # a method that must know (one that adds run-time state) can tell
    return view


def transposed_qtensor(qweight: QTensor, module: nn.Module) -> QTensor:
    """The QTensor of a :func:`linear_view` ``(out, in)`` weight as its Conv1D stores it: shape ``(in, out)``,
    reduction axis 0. The codes and parameters are the same bytes (axis 0 lays them out as ``(out, in)`` rows)."""
    shape = module.get_parameter("weight").shape
    return QTensor(
        codes=qweight.codes,
        params=dict(qweight.params),
        scheme=qweight.scheme,
        shape=shape,
        dtype=qweight.dtype,
        axis=0,
    )


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


def _conv_geometry(
    layer: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``x`` as a 4-D image and the layer's kernel, padding, stride and dilation in 2-D (Conv1d: height 1)."""
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
    padding = (*[0] * len(lead), *conv.padding)  # numeric: checked by has_matrix_view
    stride, dilation = (*lead, *conv.stride), (*lead, *conv.dilation)
    return x, kernel, padding, stride, dilation


def _positions(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[int, int]:
    """Output height and width of the convolution over the 4-D image ``x``."""
    oh, ow = ((x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2))
    return oh, ow


def input_vector_count(layer: nn.Module, x: torch.Tensor) -> int:
    """The number of rows :func:`input_vectors` returns for ``x``, without unfolding anything."""
    if isinstance(layer, nn.Linear):
        return x.numel() // x.shape[-1]
    x4, kernel, padding, stride, dilation = _conv_geometry(layer, x)
    oh, ow = _positions(x4, kernel, padding, stride, dilation)
    return x4.shape[0] * oh * ow


def input_vectors(layer: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The input vectors ``(rows, K)`` the weight matrix multiplies, for a layer input ``x``.

    Linear: every leading position is a row. Conv1d/Conv2d: every output position's receptive field,
    unfolded with the layer's padding, stride and dilation (zero padding is part of what the layer sees).
    Rows are ordered by sample, then output position (row-major).

    Args:
        layer: a layer with a matrix view (:func:`has_matrix_view`).
        x: the layer's input.
        rows: optional 1-D indices into that ordering: only those rows are built (the same values, in that
            order), so sampling a few output positions of a large image does not unfold all of them.

    Raises:
        UnsupportedError: grouped convolutions (each group sees other inputs) and non-zero padding modes.
    """
    if isinstance(layer, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        return flat if rows is None else flat[rows]
    x4, kernel, padding, stride, dilation = _conv_geometry(layer, x)
    oh, ow = _positions(x4, kernel, padding, stride, dilation)
    padded = F.pad(x4, (padding[1], padding[1], padding[0], padding[0]))
    if rows is None:  # F.unfold's layout in one copy of strided views (its CPU im2col is slow on few large patches)
        patches = padded
        for dim in range(2):  # (n, C, oh, ow, span_h, span_w), then every dilation-th tap
            patches = patches.unfold(2 + dim, dilation[dim] * (kernel[dim] - 1) + 1, stride[dim])
        patches = patches[..., :: dilation[0], :: dilation[1]]  # (n, C, oh, ow, kh, kw)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, padded.shape[1] * kernel[0] * kernel[1])
    # Only the asked rows: one gather at flat offsets into the padded input (row's corner + tap's offset).
    padded = padded.contiguous()
    _, channels, height, width = padded.shape
    sample, position = rows // (oh * ow), rows % (oh * ow)
    corner = sample * (channels * height * width) + (position // ow) * (stride[0] * width) + (position % ow) * stride[1]
    tap = (
        torch.arange(channels).view(-1, 1, 1) * (height * width)
        + torch.arange(kernel[0]).view(1, -1, 1) * (dilation[0] * width)
        + torch.arange(kernel[1]).view(1, 1, -1) * dilation[1]
    ).reshape(-1)  # F.unfold's order: channel, then kernel row, then kernel column
    return padded.view(-1)[corner[:, None] + tap[None, :]]


def check_hessian(hessian: torch.Tensor, weight: torch.Tensor) -> None:
    """Check that ``hessian`` is the ``(K, K)`` input statistic of the ``(out, K)`` weight matrix ``weight``.

    Raises:
        UnsupportedError: any other shape, naming both and the statistic to pass.
    """
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise UnsupportedError(
            f"hessian is {tuple(hessian.shape)} but the layer's weight matrix is {tuple(weight.shape)}; "
            "pass E[x x^T] over this layer's input vectors (layer_hessians)."
        )
