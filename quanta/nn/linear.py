"""Packed ``nn.Linear``: ``y = x W^T + b`` through a fast kernel when one applies, else the reference path.

The kernel is chosen statically from the weight scheme and shape and the activation scheme (at construction and
again in :meth:`set_activation`); the reference path (dequantize ``W``, then ``F.linear``) serves every other
case: other input dtypes, ``QUANTA_KERNEL=reference``, and inputs that need gradients.

A kernel may keep the codes in its own layout (int4: torch's packed blocks). The module then holds that layout
only, the same bytes as the canonical stream, and converts back on the way out: :attr:`qweights`,
``state_dict()`` and files always carry the canonical codes, so checkpoints do not depend on the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.kernels.base import REFERENCE, Kernel, forced_reference, kernel_for
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor

CODES = "weight_codes"


@register_quant_module(nn.Linear)
class QuantLinear(QuantModule):
    def __init__(self, in_features: int, out_features: int, qweight: QTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._set_qweight(qweight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._kernel: Kernel | None = None
        self._derived: tuple[str, ...] = ()
        self._choose_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantLinear:
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features, qweight, module.bias)

    # -- kernel choice and the codes' layout ------------------------------------------------------------------

    def _layout_of(self, kernel: Kernel | None) -> Kernel | None:
        return kernel if kernel is not None and kernel.to_layout is not None else None

    def canonical_codes(self) -> torch.Tensor:
        """The weight codes as the canonical packed stream (a converted temporary when a kernel holds its own)."""
        codes = self.weight_codes
        owner = self._layout_of(self._kernel)
        if owner is None or owner.from_layout is None:
            return codes
        return owner.from_layout(codes, self.weight_shape, self.weight_scheme)

    def _choose_kernel(self) -> None:
        """Pick the kernel for the current schemes and put the codes in its layout (one copy either way)."""
        canonical = self.canonical_codes()
        kernel = kernel_for("linear", self.weight_scheme, self.weight_shape, self.act_scheme, self.act_dynamic)
        new_owner = self._layout_of(kernel)
        codes = canonical
        if new_owner is not None and new_owner.to_layout is not None:
            codes = new_owner.to_layout(canonical, self.weight_shape, self.weight_scheme)
        if codes is not self.weight_codes:
            self._buffers[CODES] = codes
        self._kernel = kernel
        self.kernel = REFERENCE if kernel is None else kernel.name
        self._prepare_kernel()

    def _prepare_kernel(self) -> None:
        for name in self._derived:
            self._buffers.pop(name, None)
        derived = {} if self._kernel is None or self._kernel.prepare is None else self._kernel.prepare(self)
        for name, value in derived.items():
            self.register_buffer(f"kernel_{name}", value, persistent=False)
        self._derived = tuple(f"kernel_{name}" for name in derived)

    def set_activation(self, *args: Any, **kwargs: Any) -> None:
        super().set_activation(*args, **kwargs)
        self._choose_kernel()  # a W8A8 kernel may now apply

    def qweight_named(self, name: str) -> QTensor:
        qt = super().qweight_named(name)
        if name == "weight" and self._layout_of(self._kernel) is not None:
            qt.codes = self.canonical_codes()
        return qt

    # -- state dict: canonical codes in and out ----------------------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._layout_of(self._kernel) is not None and prefix + CODES in destination:
            destination[prefix + CODES] = self.canonical_codes()

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        owner = self._layout_of(self._kernel)
        incoming = state_dict.get(prefix + CODES)
        # Convert only codes that fit; anything else goes through unchanged for torch to report.
        fits = (
            isinstance(incoming, torch.Tensor)
            and incoming.shape == self.weight_codes.shape
            and incoming.dtype == self.weight_codes.dtype
        )
        if owner is not None and owner.to_layout is not None and fits and incoming is not None:
            converted = owner.to_layout(incoming, self.weight_shape, self.weight_scheme)
            state_dict = {**state_dict, prefix + CODES: converted}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._prepare_kernel()  # derived buffers follow the loaded codes and activation parameters

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel
        if (
            kernel is not None
            and x.dtype in kernel.input_dtypes
            and not (x.requires_grad and torch.is_grad_enabled())  # the kernels have no backward
            and not forced_reference()
        ):
            return kernel.run(x if kernel.quantizes_input else self.quantize_input(x), self)
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
