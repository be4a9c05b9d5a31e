"""Packed ``nn.Conv1d`` / ``nn.Conv2d``: the float convolution on the dequantized weight (reference path).

Channels and groups of the weight scheme run along ``in_channels * kernel`` of each output channel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor


class _QuantConv(QuantModule):
    conv_fn = staticmethod(F.conv2d)

    def __init__(self, module: nn.Module, qweight: QTensor) -> None:
        super().__init__()
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        if module.padding_mode != "zeros":
            from quanta.errors import UnsupportedError

            raise UnsupportedError(f"padding_mode={module.padding_mode!r} is not supported yet; use 'zeros'.")
        self.in_channels, self.out_channels = module.in_channels, module.out_channels
        self.kernel_size = module.kernel_size
        self.padding: Any = module.padding  # a tuple, or "same" / "valid"
        self.stride, self.dilation, self.groups = (
            module.stride,
            module.dilation,
            module.groups,
        )
        self._set_qweight(qweight)
        bias = module.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> _QuantConv:
        return cls(module, qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        weight = self.dequantized_weight(x.dtype)
        return self.conv_fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


@register_quant_module(nn.Conv1d)
class QuantConv1d(_QuantConv):
    conv_fn = staticmethod(F.conv1d)


@register_quant_module(nn.Conv2d)
class QuantConv2d(_QuantConv):
    conv_fn = staticmethod(F.conv2d)
