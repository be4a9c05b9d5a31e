"""int8 x int8 convolutions through oneDNN's quantized conv (CPU with VNNI), fp32 out: the W8A8 conv kernel.

Applies to symmetric per-output-channel int8 weights (``int8:ch``, the ``w8a8`` preset's) when the module's
input is quantized statically per tensor to 8-bit integers (see ``QuantConv*.kernel_inputs_ok``). One call:

1. quantize the fp32 input with the calibrated ``act_scale`` / ``act_zero`` to ``quint8`` (torch's
   ``quantize_per_tensor``: the same rounding as quanta's reference fake-quantization, so the codes are equal);
   signed int8 codes ``q`` become unsigned ``q + 128`` with the zero point moved by 128, the same grid;
2. run ``onednn::qconv2d_pointwise`` on those bytes with the packed weight, the weight scales and the bias,
   accumulating in int32 and writing ``y = s_x * s_w[o] * acc + b`` straight to fp32 (no output scale to
   calibrate, no second rounding), channels-last like the input.

So the output equals the reference path (fake-quantized input, dequantized weight, float conv) up to the float
rounding of the reference's own sums. The weight is repacked from the stored codes on every call (tens of
microseconds for CNN-sized weights) rather than cached: the module keeps exactly one copy of its weight, in the
canonical codes that ``state_dict`` and ``quanta.save`` write. Without VNNI, oneDNN's int8 path multiplies in
saturating int16 pairs, so the kernel only applies on CPUs that have it. Conv1d runs as a conv2d of height 1.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from quanta.kernels.base import Kernel, register_kernel
from quanta.scheme import QScheme

__all__ = ["INT8_CONV1D", "INT8_CONV2D", "int8_conv_available"]


def int8_conv_available() -> bool:
    """True when torch has oneDNN's quantized conv ops and the CPU multiplies int8 without saturation (VNNI)."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qconv2d_pointwise")
        and hasattr(torch.ops.onednn, "qconv_prepack")
        and vnni is not None
        and bool(vnni())
    )


def _applies(scheme: QScheme, shape: torch.Size, dims: int) -> bool:
    return (
        scheme.format == "int8"
        and scheme.granularity == "channel"
        and scheme.mode == "sym"
        and len(shape) == dims
        and int8_conv_available()
    )


def _applies_conv1d(scheme: QScheme, shape: torch.Size) -> bool:  # weight (out, in / groups, k)
    return _applies(scheme, shape, 3)


def _applies_conv2d(scheme: QScheme, shape: torch.Size) -> bool:  # weight (out, in / groups, kh, kw)
    return _applies(scheme, shape, 4)


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantConv1d / QuantConv2d with static int8 input
    one_d = x.dim() == 3
    stride, padding, dilation = list(module.stride), list(module._kernel_padding), list(module.dilation)
    weight = module.weight_codes.view(torch.int8).view(module.weight_shape)  # (out, in / groups, *kernel)
    if one_d:  # (n, c, l) -> (n, c, 1, l); kernel (k,) -> (1, k)
        x, weight = x.unsqueeze(2), weight.unsqueeze(2)
        stride, padding, dilation = [1, *stride], [0, *padding], [1, *dilation]
    w_scale = module.weight_scale.reshape(-1).float()  # (out,)
    x_scale = float(module.act_scale)
    x_zero = int(module.act_zero) + (128 if module.act_scheme.fmt.signed_codes else 0)  # signed codes -> uint8
    with warnings.catch_warnings():  # torch 2.13 flags quint8 tensors as deprecated; this one lives for one call
        warnings.simplefilter("ignore", UserWarning)
        qx = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), x_scale, x_zero, torch.quint8)
    # The uint8 bytes of the quint8 tensor, zero-copy (the op takes plain uint8 with the qparams as arguments).
    x_u8 = torch.empty(0, dtype=torch.uint8).set_(qx.untyped_storage(), qx.storage_offset(), qx.shape, qx.stride())
    packed = torch.ops.onednn.qconv_prepack(
        weight, w_scale, x_scale, x_zero, stride, padding, dilation, module.groups, None
    )
    bias = None if module.bias is None else module.bias.float()
    w_zero = torch.zeros(w_scale.numel(), dtype=torch.int64)
    y = torch.ops.onednn.qconv2d_pointwise(
        x_u8, x_scale, x_zero, packed, w_scale, w_zero, bias, stride, padding, dilation, module.groups,
        1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    return y.squeeze(2) if one_d else y


INT8_CONV2D = register_kernel(Kernel("int8_conv", "conv2d", _applies_conv2d, (torch.float32,), _run))
INT8_CONV1D = register_kernel(Kernel("int8_conv", "conv1d", _applies_conv1d, (torch.float32,), _run))
