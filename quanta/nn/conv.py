"""Packed ``nn.Conv1d`` / ``nn.Conv2d``: a registered int8 kernel where one applies, else the reference path
(the float convolution on the dequantized weight).

Channels and groups of the weight scheme run along ``in_channels * kernel`` of each output channel.
The kernel (``quanta.kernels``, op ``"conv1d"`` / ``"conv2d"``) is chosen statically from the weight scheme and
shape and the activation scheme, at construction and again in :meth:`set_activation`, and kept in
``module.kernel``. Inputs it is not for (another dtype or device, inputs that need gradients,
``QUANTA_KERNEL=reference``) take the reference path, which serves every format.

A kernel may hold the weight in its own layout (oneDNN's packed int8 weight) instead of the ``weight_codes``
buffer; :class:`~quanta.nn.kernel_layout.KernelLayoutModule` converts back on the way out, so :attr:`qweights`,
``state_dict()`` and files always carry the canonical codes. Layout functions get the grouped weight shape
(:attr:`grouped_weight_shape`), since a grouped weight packs differently.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import UnsupportedError
from quanta.kernels.base import Kernel, forced_reference, kernel_for
from quanta.kernels.int8_conv import quantize_input_codes
from quanta.nn import int8_flow
from quanta.nn.base import register_quant_module
from quanta.nn.int8_flow import Int8Activation
from quanta.nn.kernel_layout import KernelLayoutModule
from quanta.tensor import QTensor


def _explicit_padding(padding: Any, kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...] | None:
    """``padding`` as one number per spatial dim, or ``None`` when "same" needs uneven padding (kernels skip it)."""
    if padding == "valid":
        return (0,) * len(kernel_size)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
        return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
    return tuple(padding)


class _QuantConv(KernelLayoutModule):
    conv_fn = staticmethod(F.conv2d)
    op = "conv2d"
    keeps_kernel_off_cpu = True  # the int8 kernel packs per call from the canonical codes once its object is gone
    supports_qat = True

    def __init__(self, module: nn.Module, qweight: QTensor) -> None:
        super().__init__()
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        if module.padding_mode != "zeros":
            raise UnsupportedError(f"padding_mode={module.padding_mode!r} is not supported yet; use 'zeros'.")
        self.in_channels, self.out_channels = module.in_channels, module.out_channels
        self.kernel_size = module.kernel_size
        self.padding: Any = module.padding  # a tuple, or "same" / "valid" (the reference path takes either)
        self.stride, self.dilation, self.groups = module.stride, module.dilation, module.groups
        self.kernel_padding = _explicit_padding(module.padding, module.kernel_size, module.dilation)
        self._set_qweight(qweight)
        bias = module.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._init_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> _QuantConv:
        return cls(module, qweight)

    @property
    def grouped_weight_shape(self) -> torch.Size:
        """``(groups, out / groups, in / groups, *kernel)``: the weight shape with the groups split out."""
        out, *rest = self.weight_shape
        return torch.Size([self.groups, out // self.groups, *rest])

    @property
    def layout_shape(self) -> torch.Size:
        return self.grouped_weight_shape  # a grouped weight packs differently

    def _find_kernel(self) -> Kernel | None:
        if self.kernel_padding is None or self.weight_axis not in (None, 0):
            return None
        return kernel_for(self.op, self.weight_scheme, self.weight_shape, self.act_scheme, self.act_dynamic)

    # -- forward ---------------------------------------------------------------------------------------------

    def _output_shape(self, shape: torch.Size) -> torch.Size:
        assert self.kernel_padding is not None
        spatial = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(
                shape[2:], self.kernel_size, self.stride, self.kernel_padding, self.dilation, strict=True
            )
        ]
        return torch.Size([shape[0], self.out_channels, *spatial])

    def _deferred(self, x: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        """The int8 flow (``quanta.nn.int8_flow``): the input as uint8 codes now, the conv when its result is read."""
        assert kernel.on_codes is not None and kernel.input_grid is not None
        scale, zero = kernel.input_grid(self)
        if isinstance(x, Int8Activation):
            codes, scale, zero = x.as_codes(scale, zero)  # int8 codes already: taken as they are
            codes = codes.contiguous(memory_format=torch.channels_last)
            shape, dtype = x.size_, x.dtype_
        else:
            codes, shape, dtype = quantize_input_codes(x, scale, zero), x.shape, x.dtype
        return Int8Activation.pending(self._output_shape(shape), dtype, self, kernel.on_codes, (codes, scale, zero))

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's float operation on an input and a (dequantized or fake-quantized) weight."""
        return self.conv_fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake = self.fake_state
        if fake is not None:
            return fake.forward(self, x)
        kernel = self._kernel
        if (
            type(x) is Int8Activation  # made by an int8 conv of this call: CPU, no gradient, a kernel dtype
            and kernel is not None
            and kernel.on_codes is not None
            and len(x.size_) == self.batched_dims
            and int8_flow.active()
            and not forced_reference()
        ):
            return self._deferred(x, kernel)
        if (
            kernel is not None
            and x.dtype in kernel.input_dtypes
            and x.device.type == "cpu"
            and x.dim() == self.batched_dims  # unbatched inputs take the reference path
            and not (x.requires_grad and torch.is_grad_enabled())  # the reference path carries input gradients
            and not forced_reference()
        ):
            if kernel.on_codes is not None and int8_flow.active():
                return self._deferred(x, kernel)
            return kernel.run(x if kernel.quantizes_input else self.quantize_input(x), self)
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.compute(x, self.dequantized_weight(x.dtype), bias)


@register_quant_module(nn.Conv1d)
class QuantConv1d(_QuantConv):
    conv_fn = staticmethod(F.conv1d)
    op = "conv1d"
    batched_dims = 3  # (N, C, L)


@register_quant_module(nn.Conv2d)
class QuantConv2d(_QuantConv):
    conv_fn = staticmethod(F.conv2d)
    op = "conv2d"
    batched_dims = 4  # (N, C, H, W)
