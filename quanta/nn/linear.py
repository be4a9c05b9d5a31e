"""Packed ``nn.Linear``: ``y = x W^T + b`` with ``W`` dequantized from its QTensor (reference path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quanta.kernels.base import REFERENCE, forced_reference, kernel_for
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor


@register_quant_module(nn.Linear)
class QuantLinear(QuantModule):
    def __init__(self, in_features: int, out_features: int, qweight: QTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._set_qweight(qweight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._kernel = kernel_for("linear", qweight.scheme, qweight.shape)
        self.kernel = REFERENCE if self._kernel is None else self._kernel.name

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantLinear:
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features, qweight, module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        kernel = self._kernel
        if kernel is not None and x.dtype in kernel.input_dtypes and not forced_reference():
            return kernel.run(x, self)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
