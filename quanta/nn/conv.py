"""Packed ``nn.Conv1d`` / ``nn.Conv2d``: a registered int8 kernel where one applies, else the reference path
(the float convolution on the dequantized weight).

Channels and groups of the weight scheme run along ``in_channels * kernel`` of each output channel.
The kernel (``quanta.kernels``, op ``"conv1d"`` / ``"conv2d"``) is chosen statically from the weight scheme and
shape and the activation scheme, at construction and again in :meth:`set_activation`, and kept in
``module.kernel``. Inputs it is not for (another dtype or device, inputs that need gradients,
``QUANTA_KERNEL=reference``) take the reference path, which serves every format.

A kernel may hold the weight in its own layout (oneDNN's packed int8 weight): the module then keeps that object
*instead of* its ``weight_codes`` buffer, and converts back on the way out, so :attr:`qweights`, ``state_dict()``
and files always carry the canonical codes. Layout functions get the grouped weight shape
(:attr:`grouped_weight_shape`), since a grouped weight packs differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import UnsupportedError
from quanta.kernels.base import REFERENCE, Kernel, forced_reference, kernel_for
from quanta.nn.base import QuantModule, register_quant_module
from quanta.primitives.packing import packed_nbytes
from quanta.tensor import QTensor

CODES = "weight_codes"


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
            raise UnsupportedError(f"padding_mode={module.padding_mode!r} is not supported yet; use 'zeros'.")
        self.in_channels, self.out_channels = module.in_channels, module.out_channels
        self.kernel_size = module.kernel_size
        self.padding: Any = module.padding  # a tuple, or "same" / "valid" (the reference path takes either)
        self.stride, self.dilation, self.groups = module.stride, module.dilation, module.groups
        self.kernel_padding = _explicit_padding(module.padding, module.kernel_size, module.dilation)
        self._set_qweight(qweight)
        bias = module.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._kernel: Kernel | None = None
        self._held: Any = None  # the kernel's opaque copy of the codes, when it keeps one instead of the buffer
        self._choose_kernel()

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> _QuantConv:
        return cls(module, qweight)

    @property
    def grouped_weight_shape(self) -> torch.Size:
        """``(groups, out / groups, in / groups, *kernel)``: the weight shape with the groups split out."""
        out, *rest = self.weight_shape
        return torch.Size([self.groups, out // self.groups, *rest])

    # -- kernel choice and the codes' layout ----------------------------------------------------------------

    @property
    def kernel_weight(self) -> Any:
        """The kernel's copy of the codes: an opaque packed object, or the ``weight_codes`` buffer."""
        return self._held if self._held is not None else self.weight_codes

    def canonical_codes(self) -> torch.Tensor:
        """The weight codes as the canonical packed stream (a converted temporary when a kernel holds its own)."""
        kernel = self._kernel
        if self._held is None or kernel is None or kernel.from_layout is None:
            return self.weight_codes
        codes: torch.Tensor = kernel.from_layout(self._held, self.grouped_weight_shape, self.weight_scheme)
        return codes

    def _hold(self, kernel: Kernel | None, canonical: torch.Tensor) -> None:
        """Keep ``canonical`` as ``kernel`` wants it: its opaque object instead of the buffer, or the buffer."""
        held = canonical
        if kernel is not None and kernel.to_layout is not None:
            held = kernel.to_layout(canonical, self.grouped_weight_shape, self.weight_scheme)
        if isinstance(held, torch.Tensor):
            self._buffers[CODES] = held
            self._held = None
        else:  # the object is the only copy: the buffer goes (state_dict rebuilds the canonical codes)
            self._buffers.pop(CODES, None)
            self._held = held

    def _choose_kernel(self) -> None:
        canonical = self.canonical_codes()
        kernel = None
        if self.kernel_padding is not None and self.weight_axis in (None, 0):
            kernel = kernel_for(self.op, self.weight_scheme, self.weight_shape, self.act_scheme, self.act_dynamic)
        self._hold(kernel, canonical)
        self._kernel = kernel
        self.kernel = REFERENCE if kernel is None else kernel.name

    def _apply(self, fn: Any, recurse: bool = True) -> _QuantConv:
        # The packed weight lives in CPU memory: moving elsewhere puts the canonical codes back in their buffer
        # (which then moves like any buffer; the kernel packs per call again if the module comes back).
        if self._held is not None and fn(torch.empty(0)).device.type != "cpu":
            self._buffers[CODES] = self.canonical_codes()
            self._held = None
        super()._apply(fn, recurse)
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry the canonical codes: oneDNN's layout depends on the CPU it was made on
        # (and is no tensor with storage); __setstate__ picks the kernel again where the copy lands.
        state: dict[str, Any] = super().__getstate__()
        if self._held is None:
            return state
        buffers = {**state["_buffers"], CODES: self.canonical_codes()}
        return {**state, "_buffers": buffers, "_held": None, "_kernel": None, "kernel": REFERENCE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._kernel is None and self.weight_codes.device.type == "cpu":
            self._choose_kernel()

    def set_activation(self, *args: Any, **kwargs: Any) -> None:
        super().set_activation(*args, **kwargs)
        self._choose_kernel()  # the input settings decide whether an integer kernel can serve this module

    def extra_nbytes(self) -> int:
        """Bytes held outside tensors (the kernel's packed weight), counted by :func:`quanta.model_nbytes`."""
        kernel = self._kernel
        if self._held is None or kernel is None or kernel.layout_nbytes is None:
            return 0
        return kernel.layout_nbytes(self._held, self.grouped_weight_shape)

    def qweight_named(self, name: str) -> QTensor:
        if name != "weight" or self._held is None:
            return super().qweight_named(name)
        scheme, shape, dtype, axis, param_names = self._qweight_meta[name]
        params = {p: getattr(self, f"{name}_{p}") for p in param_names}
        return QTensor(self.canonical_codes(), params, scheme, shape, dtype, axis)

    # -- state dict: canonical codes in and out -------------------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._held is not None:
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
        key = prefix + CODES
        if self._held is not None:  # the codes go into the kernel's layout, not into a buffer
            incoming = state_dict.get(key)
            want = torch.Size([packed_nbytes(self.weight_shape.numel(), self.weight_scheme.bits)])
            if incoming is None:
                missing_keys.append(key)
            elif not isinstance(incoming, torch.Tensor) or incoming.shape != want or incoming.dtype != torch.uint8:
                got = (
                    f"{incoming.dtype} {tuple(incoming.shape)}"
                    if isinstance(incoming, torch.Tensor)
                    else "not a tensor"
                )
                error_msgs.append(f"size mismatch for {key}: got {got}, expected torch.uint8 {tuple(want)}.")
            else:
                self._hold(self._kernel, incoming.detach())
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel
        if (
            kernel is not None
            and x.dtype in kernel.input_dtypes
            and x.device.type == "cpu"
            and x.dim() == self.batched_dims  # unbatched inputs take the reference path
            and not (x.requires_grad and torch.is_grad_enabled())  # the reference path carries input gradients
            and not forced_reference()
        ):
            return kernel.run(x if kernel.quantizes_input else self.quantize_input(x), self)
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        weight = self.dequantized_weight(x.dtype)
        return self.conv_fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


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
