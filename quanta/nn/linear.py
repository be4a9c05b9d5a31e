"""Packed ``nn.Linear``: ``y = x W^T + b`` through a fast kernel when one applies, else the reference path.

The kernel is chosen statically from the weight scheme and shape and the activation scheme (at construction and
again in :meth:`set_activation`); the reference path (dequantize ``W``, then ``F.linear``) serves every other
case: other input dtypes, non-CPU inputs, ``QUANTA_KERNEL=reference``, and inputs that need gradients.

A kernel may keep the codes in its own layout (int4: torch's packed blocks in the ``weight_codes`` buffer; W8A8 on
fbgemm: fbgemm's packed weight object, which replaces the buffer) and the stored parameters in its own tensors (int4
with bf16 scales: torch's ``[K / g, N, 2]`` scale-and-zero table); :class:`~quanta.nn.kernel_layout.KernelLayoutModule`
holds that copy only and gives the canonical codes and parameters back to :attr:`qweights`, ``state_dict()``, files
and pickles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import InvalidTensorError
from quanta.kernels.base import Kernel, forced_reference, kernel_for
from quanta.nn.base import register_quant_module
from quanta.nn.kernel_layout import KernelLayoutModule
from quanta.tensor import QTensor


@register_quant_module(nn.Linear)
class QuantLinear(KernelLayoutModule):
    supports_qat = True

    def __init__(self, in_features: int, out_features: int, qweight: QTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._set_qweight(qweight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._init_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantLinear:
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features, qweight, module.bias)

    def _find_kernel(self) -> Kernel | None:
        if not self._on_cpu():  # every kernel runs torch's CPU operators: codes elsewhere (meta, GPU) get none
            return None
        return kernel_for("linear", self.weight_scheme, self.weight_shape, self.act_scheme, self.act_dynamic)

    # -- forward -------------------------------------------------------------------------------------------

    def set_input_smoothing(self, factors: torch.Tensor) -> None:
        """Multiply every input by ``factors`` (one per input feature, buffer ``act_smooth``) before it is quantized.

        :mod:`quanta.methods.input_smoothing` sets it to ``1 / s`` with the weight's columns multiplied by ``s``,
        so the layer computes the same function while its per-tensor input grid covers every feature evenly.
        """
        if factors.shape != (self.in_features,) or not bool(torch.isfinite(factors).all()):
            raise InvalidTensorError(
                f"input smoothing takes {self.in_features} finite factors (one per input feature), got shape "
                f"{tuple(factors.shape)}."
            )
        self.register_buffer("act_smooth", factors.detach().float().clone())

    def extra_repr(self) -> str:
        smoothed = ", input smoothed per feature" if self.input_smoothing is not None else ""
        return super().extra_repr() + smoothed

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's float operation on an input and a (dequantized or fake-quantized) weight."""
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake = self.fake_state
        if fake is not None:
            return fake.forward(self, x)
        smooth = self.input_smoothing
        if smooth is not None:  # before the input is quantized, by the kernel or below
            x = x * smooth.to(x.dtype)
        kernel = self._kernel
        if (
            kernel is not None
            and x.dtype in kernel.input_dtypes
            and x.device.type == "cpu"  # every kernel here runs torch's CPU operators
            and not (x.requires_grad and torch.is_grad_enabled())  # the kernels have no backward
            and not forced_reference()
        ):
            return kernel.run(x if kernel.quantizes_input else self.quantize_input(x), self)
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.compute(x, self.dequantized_weight(x.dtype), bias)
