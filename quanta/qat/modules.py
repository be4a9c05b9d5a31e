"""The fake-quantized twins trained by QAT: a float layer whose forward pass sees its weights and input as they
will be after quantization.

Each twin *is* its float layer (the class of the module is switched in place, so parameters, their tensors and any
optimizer built on them stay the same), plus a ``weight_quantizer`` (``weight_quantizers``, one per matrix, for the
recurrent layers) and, when the recipe quantizes activations, an ``input_quantizer`` (:mod:`quanta.qat.quantizers`).
:func:`quanta.qat.convert` turns each into the packed module ``quanta.quantize`` would build, with the trained grid.

A convolution or linear layer followed by a BatchNorm trains with the BatchNorm folded in
(:mod:`quanta.qat.batchnorm`): its quantized weight is the folded one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from quanta.qat.batchnorm import fold_factor, folded_bias, normalises_with_running_stats
from quanta.qat.quantizers import FormatInputQuantizer, InputQuantizer, WeightQuantizer

__all__ = ["QATGRU", "QATLSTM", "QAT_TWINS", "QATConv1d", "QATConv2d", "QATLinear", "QATModule"]


class QATModule(nn.Module):
    """Mixin of the fake-quantized twins."""

    float_type: ClassVar[type[nn.Module]]
    weight_quantizer: WeightQuantizer
    input_quantizer: InputQuantizer | FormatInputQuantizer | None

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def weight_quantizer_items(self) -> list[tuple[str, WeightQuantizer]]:
        """``(parameter name, its quantizer)`` for every quantized weight."""
        return [("weight", self.weight_quantizer)]

    @property
    def folded_batchnorm(self) -> nn.Module | None:
        """The BatchNorm folded into this layer's weight while training (not a submodule: it stays where it is)."""
        return self.__dict__.get("_folded_batchnorm")

    def fold_batchnorm(self, bn: nn.Module | None) -> None:
        self.__dict__["_folded_batchnorm"] = bn

    @property
    def float_weights(self) -> bool:
        """The weights are used unquantized (while ``prepare_qat`` calibrates inputs on the float model)."""
        return bool(self.__dict__.get("_float_weights", False))

    def use_float_weights(self, on: bool) -> None:
        self.__dict__["_float_weights"] = on


class _QATWeighted(QATModule):
    """Linear and convolution twins: ``forward`` is ``_compute(input, weight, bias)``."""

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._parameters["weight"]
        assert weight is not None
        bias = self._parameters.get("bias")
        x = self.quantized_input(x)
        bn = self.folded_batchnorm
        if bn is None:
            return self._compute(x, weight if self.float_weights else self.weight_quantizer(weight), bias)
        # Simulated folding (Jacob et al. 2018; Krishnamoorthi 2018): quantize the weight scaled by
        # gamma / sqrt(running_var + eps). With running statistics (eval, or frozen) this layer computes the folded
        # layer itself, exactly as convert builds it, and the BatchNorm passes through; with batch statistics the
        # scale is undone on the output so the BatchNorm that follows sees what it would see unfolded.
        factor = fold_factor(bn)
        scaled = weight * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
        folded_weight = scaled if self.float_weights else self.weight_quantizer(scaled)
        if normalises_with_running_stats(bn):
            return self._compute(x, folded_weight, folded_bias(bias, bn))
        y = self._compute(x, folded_weight, None)
        y = y / factor.reshape((1, -1) + (1,) * (y.dim() - 2))
        return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.dim() - 2))


class QATLinear(_QATWeighted, nn.Linear):
    float_type = nn.Linear

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class QATConv1d(_QATWeighted, nn.Conv1d):
    float_type = nn.Conv1d

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)


class QATConv2d(_QATWeighted, nn.Conv2d):
    float_type = nn.Conv2d

    def _compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)


class _QATRecurrent(QATModule):
    """LSTM and GRU twins: every ``weight_*`` matrix fake-quantized (``weight_quantizers``), the input sequence
    quantized as the packed module quantizes it; torch's own recurrent forward does the rest."""

    weight_quantizers: nn.ModuleDict
    _flat_weights: list[Any]
    _flat_weights_names: list[str]

    def weight_quantizer_items(self) -> list[tuple[str, WeightQuantizer]]:
        return [(name, q) for name, q in self.weight_quantizers.items() if isinstance(q, WeightQuantizer)]

    def forward(self, input: Any, hx: Any = None) -> Any:
        if isinstance(input, PackedSequence):
            input = input._replace(data=self.quantized_input(input.data))
        else:
            input = self.quantized_input(input)
        if self.float_weights:
            return self.float_type.forward(self, input, hx)
        quantizers = self.weight_quantizers
        float_weights = self._flat_weights
        self._flat_weights = [
            quantizers[name](w) if name in quantizers else w
            for name, w in zip(self._flat_weights_names, float_weights, strict=True)
        ]
        try:
            return self.float_type.forward(self, input, hx)
        finally:
            self._flat_weights = float_weights


class QATLSTM(_QATRecurrent, nn.LSTM):
    float_type = nn.LSTM


class QATGRU(_QATRecurrent, nn.GRU):
    float_type = nn.GRU


QAT_TWINS: dict[type[nn.Module], type[QATModule]] = {
    nn.Linear: QATLinear,
    nn.Conv1d: QATConv1d,
    nn.Conv2d: QATConv2d,
    nn.LSTM: QATLSTM,
    nn.GRU: QATGRU,
}
