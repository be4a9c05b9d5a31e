"""Packed ``nn.Linear``: ``y = x W^T + b`` through a fast kernel when one applies, else the reference path.

The kernel is chosen statically from the weight scheme and shape and the activation scheme (at construction and
again in :meth:`set_activation`); the reference path (dequantize ``W``, then ``F.linear``) serves every other
case: other input dtypes, non-CPU inputs, ``QUANTA_KERNEL=reference``, and inputs that need gradients.

A kernel may keep the codes in its own layout (int4: torch's packed blocks, the same bytes as the canonical
stream, in the ``weight_codes`` buffer; W8A8 on fbgemm: fbgemm's packed weight object, which replaces the buffer
and reports its bytes through :meth:`extra_nbytes`). The module then holds that copy only and converts back on
the way out: :attr:`qweights`, ``state_dict()`` and files always carry the canonical codes, so checkpoints do not
depend on the kernel or the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.kernels.base import REFERENCE, Kernel, forced_reference, kernel_for
from quanta.nn.base import QuantModule, register_quant_module
from quanta.primitives.packing import packed_nbytes
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
        self._held: Any = None
        self._derived: tuple[str, ...] = ()
        self._choose_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantLinear:
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features, qweight, module.bias)

    # -- kernel choice and the codes' layout ------------------------------------------------------------------

    def _layout_of(self, kernel: Kernel | None) -> Kernel | None:
        return kernel if kernel is not None and kernel.to_layout is not None else None

    @property
    def kernel_weight(self) -> Any:
        """The kernel's own copy of the codes: the ``weight_codes`` buffer, or an opaque packed object."""
        return self._held if self._held is not None else self.weight_codes

    def canonical_codes(self) -> torch.Tensor:
        """The weight codes as the canonical packed stream (a converted temporary when a kernel holds its own)."""
        owner = self._layout_of(self._kernel)
        if owner is None or owner.from_layout is None:
            return self.weight_codes
        codes: torch.Tensor = owner.from_layout(self.kernel_weight, self.weight_shape, self.weight_scheme)
        return codes

    def _hold(self, kernel: Kernel | None, canonical: torch.Tensor) -> None:
        """Keep ``canonical`` in ``kernel``'s layout: as the ``weight_codes`` buffer, or as an opaque object."""
        owner = self._layout_of(kernel)
        held = (
            canonical
            if owner is None or owner.to_layout is None
            else owner.to_layout(canonical, self.weight_shape, self.weight_scheme)
        )
        if isinstance(held, torch.Tensor):
            if CODES not in self._buffers or held is not self._buffers[CODES]:
                self._buffers[CODES] = held
            self._held = None
        else:  # the object is the only copy: the buffer goes (state_dict rebuilds the canonical codes)
            self._buffers.pop(CODES, None)
            self._held = held

    def _on_cpu(self) -> bool:
        codes = self._buffers.get(CODES)
        return codes is None or codes.device.type == "cpu"  # no buffer: an opaque (CPU) packed object holds them

    def _choose_kernel(self) -> None:
        """Pick the kernel for the current schemes and put the codes in its layout (one copy either way). Every
        kernel runs torch's CPU operators, so a module whose codes are elsewhere (meta, GPU) gets none."""
        canonical = self.canonical_codes()
        kernel = None
        if self._on_cpu():
            kernel = kernel_for("linear", self.weight_scheme, self.weight_shape, self.act_scheme, self.act_dynamic)
        self._hold(kernel, canonical)
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

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        # A kernel's layout lives in CPU memory (an fbgemm object cannot move at all): leaving the CPU puts the
        # canonical codes back in their buffer, which then moves like any buffer; coming back picks a kernel again.
        if self._layout_of(self._kernel) is not None and fn(torch.empty(0)).device.type != "cpu":
            self._hold(None, self.canonical_codes())
            self._kernel, self.kernel = None, REFERENCE
            self._prepare_kernel()
        super()._apply(fn, recurse)
        if self._kernel is None and self._on_cpu():
            self._choose_kernel()
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry the canonical codes: a kernel's layout depends on the CPU it was made on
        # (and fbgemm's object is not a tensor); __setstate__ picks the kernel again where the copy lands.
        state: dict[str, Any] = super().__getstate__()
        if self._layout_of(self._kernel) is None:
            return state
        buffers = dict(state["_buffers"])
        buffers[CODES] = self.canonical_codes()
        return {**state, "_buffers": buffers, "_held": None, "_kernel": None, "kernel": REFERENCE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._kernel is None and self._on_cpu():
            self._choose_kernel()

    def extra_nbytes(self) -> int:
        """Bytes held outside tensors (an opaque packed weight), counted by :func:`quanta.model_nbytes`."""
        kernel = self._kernel
        if self._held is None or kernel is None or kernel.layout_nbytes is None:
            return 0
        return kernel.layout_nbytes(self._held, self.weight_shape)

    def set_activation(self, *args: Any, **kwargs: Any) -> None:
        super().set_activation(*args, **kwargs)
        self._choose_kernel()  # a W8A8 kernel may now apply

    def qweight_named(self, name: str) -> QTensor:
        if name != "weight" or self._layout_of(self._kernel) is None:
            return super().qweight_named(name)
        scheme, shape, dtype, axis, param_names = self._qweight_meta[name]
        params = {p: getattr(self, f"{name}_{p}") for p in param_names}
        return QTensor(self.canonical_codes(), params, scheme, shape, dtype, axis)

    # -- state dict: canonical codes in and out ----------------------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._layout_of(self._kernel) is not None:
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
        if self._layout_of(self._kernel) is not None:
            state_dict = self._load_codes(state_dict, prefix, missing_keys, error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self._kernel is None and self._on_cpu():  # e.g. a module moved to meta, then loaded with assign=True
            self._choose_kernel()
        self._prepare_kernel()  # derived buffers follow the loaded codes and activation parameters

    def _load_codes(
        self, state_dict: Mapping[str, Any], prefix: str, missing_keys: list[str], error_msgs: list[str]
    ) -> Mapping[str, Any]:
        """Take the canonical codes out of ``state_dict`` into the kernel's layout; return what is left."""
        key = prefix + CODES
        rest = {k: v for k, v in state_dict.items() if k != key}
        incoming = state_dict.get(key)
        if incoming is None:
            missing_keys.append(key)
            return rest
        want = torch.Size([packed_nbytes(self.weight_shape.numel(), self.weight_scheme.bits)])
        if not isinstance(incoming, torch.Tensor) or incoming.shape != want or incoming.dtype != torch.uint8:
            got = f"{incoming.dtype} {tuple(incoming.shape)}" if isinstance(incoming, torch.Tensor) else "not a tensor"
            error_msgs.append(f"size mismatch for {key}: got {got}, expected torch.uint8 {tuple(want)}.")
            return rest
        self._hold(self._kernel, incoming.detach())
        # A tensor layout is a buffer again: hand it to torch's loader (which expects the key), already converted.
        return rest if self._held is not None else {**rest, key: self.weight_codes}

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
