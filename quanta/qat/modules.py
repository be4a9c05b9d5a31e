"""The fake-quantized twins trained by QAT: a float layer whose forward pass sees its weight and input as they will
be after quantization.

Each twin *is* its float layer (the class of the module is switched in place, so parameters, their tensors and any
optimizer built on them stay the same), plus a ``weight_quantizer`` and, when the recipe quantizes activations, an
``input_quantizer`` (:mod:`quanta.qat.quantizers`). :func:`quanta.qat.convert` turns each into the packed module
``quanta.quantize`` would build, with the trained grid.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from quanta.qat.quantizers import FormatInputQuantizer, InputQuantizer, WeightQuantizer

__all__ = ["QAT_TWINS", "QATConv1d", "QATConv2d", "QATLinear", "QATModule"]


class QATModule(nn.Module):
    """Mixin of the fake-quantized twins."""

    float_type: ClassVar[type[nn.Module]]
    weight_quantizer: WeightQuantizer
    input_quantizer: InputQuantizer | FormatInputQuantizer | None

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self) -> torch.Tensor:
        weight = self._parameters["weight"]
        assert weight is not None
        return self.weight_quantizer(weight)


class QATLinear(QATModule, nn.Linear):
    float_type = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


class QATConv1d(QATModule, nn.Conv1d):
    float_type = nn.Conv1d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QATConv2d(QATModule, nn.Conv2d):
    float_type = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


QAT_TWINS: dict[type[nn.Module], type[QATModule]] = {nn.Linear: QATLinear, nn.Conv1d: QATConv1d, nn.Conv2d: QATConv2d}
