"""Packed ``nn.Conv1d`` / ``nn.Conv2d``: a registered int8 kernel where one applies, else the reference path
(the float convolution on the dequantized weight).

Channels and groups of the weight scheme run along ``in_channels * kernel`` of each output channel.
Convolution kernels (``quanta.kernels``, op ``"conv1d"`` / ``"conv2d"``) multiply integer inputs, so they serve a
module only when its input is quantized statically per tensor to 8-bit integers (``w8a8``); the choice is made
when the weight and activation settings are known (construction, :meth:`set_activation`) and kept in
``module.kernel``. Inputs the kernel is not for (another dtype, a non-CPU device, inputs that need gradients)
take the reference path, which serves every format.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.kernels.base import REFERENCE, Kernel, forced_reference, kernel_for
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor


def _explicit_padding(padding: Any, kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...] | None:
    """``padding`` as one number per spatial dim, or ``None`` when "same" needs uneven padding (kernels skip it)."""
    if padding == "valid":
        return (0,) * len(kernel_size)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
        return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
    return tuple(padding)


class _QuantConv(QuantModule):
    conv_fn = staticmethod(F.conv2d)
    op = "conv2d"

    def __init__(self, module: nn.Module, qweight: QTensor) -> None:
        super().__init__()
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        if module.padding_mode != "zeros":
            from quanta.errors import UnsupportedError

            raise UnsupportedError(f"padding_mode={module.padding_mode!r} is not supported yet; use 'zeros'.")
        self.in_channels, self.out_channels = module.in_channels, module.out_channels
        self.kernel_size = module.kernel_size
        self.padding: Any = module.padding  # a tuple, or "same" / "valid" (the reference path takes either)
        self.stride, self.dilation, self.groups = (
            module.stride,
            module.dilation,
            module.groups,
        )
        self._kernel_padding = _explicit_padding(module.padding, module.kernel_size, module.dilation)
        self._set_qweight(qweight)
        bias = module.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._choose_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> _QuantConv:
        return cls(module, qweight)

    def set_activation(self, *args: Any, **kwargs: Any) -> None:
        super().set_activation(*args, **kwargs)
        self._choose_kernel()  # the input settings decide whether an integer kernel can serve this module

    def kernel_inputs_ok(self) -> bool:
        """Whether the input is quantized the way integer conv kernels take it: static, per tensor, full 8-bit."""
        act = self.act_scheme
        return (
            act is not None
            and not self.act_dynamic
            and act.granularity == "tensor"
            and act.format in ("int8", "uint8")
            and not act.narrow
        )

    def _choose_kernel(self) -> None:
        kernel = None
        if self.kernel_inputs_ok() and self._kernel_padding is not None and self.weight_axis in (None, 0):
            kernel = kernel_for(self.op, self.weight_scheme, self.weight_shape)
        self._kernel: Kernel | None = kernel
        self.kernel = REFERENCE if kernel is None else kernel.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel
        if (
            kernel is not None
            and x.dtype in kernel.input_dtypes
            and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled())  # the reference path carries input gradients
            and not forced_reference()
        ):
            return kernel.run(x, self)
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        weight = self.dequantized_weight(x.dtype)
        return self.conv_fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


@register_quant_module(nn.Conv1d)
class QuantConv1d(_QuantConv):
    conv_fn = staticmethod(F.conv1d)
    op = "conv1d"


@register_quant_module(nn.Conv2d)
class QuantConv2d(_QuantConv):
    conv_fn = staticmethod(F.conv2d)
    op = "conv2d"
