"""The packed state shared by every quantized module, and the registry from float module types to their twins.

A packed module keeps its weight only as a :class:`~quanta.tensor.QTensor`, stored as buffers
(``weight_codes`` plus ``weight_<param>``) so that ``state_dict``, ``.to()`` and ``deepcopy`` work as for any
module. There is no float copy: the forward pass dequantizes on the fly (the reference path) and drops it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.primitives.affine import int_range, symmetric_scale, symmetric_zero
from quanta.primitives.ste import fake_quantize_affine
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = [
    "FakeQuantState",
    "QuantModule",
    "fake_quantized_modules",
    "qat_types",
    "quant_class_for",
    "register_quant_module",
    "registered_types",
]

_REGISTRY: dict[type[nn.Module], type[QuantModule]] = {}


class FakeQuantState(Protocol):
    """What a module in its fake-quantized state (quantization-aware training, :mod:`quanta.qat.fake_state`)
    computes in place of its packed weights and calibrated input grid."""

    def weight(self, module: QuantModule, name: str) -> torch.Tensor:
        """Weight ``name`` as the forward pass sees it: the float master weight, fake-quantized."""
        ...

    def quantize_input(self, module: QuantModule, x: torch.Tensor) -> torch.Tensor:
        """The input, fake-quantized as the packed module will quantize it."""
        ...

    def forward(self, module: QuantModule, x: torch.Tensor) -> torch.Tensor:
        """The whole forward pass of a linear or convolution module (its BatchNorm folded in, if any)."""
        ...


class QuantModule(nn.Module):
    """Base of packed quantized modules: holds the weight as a QTensor in buffers.

    A module is either **packed** (the weight as codes and stored parameters, the usual state) or
    **fake-quantized** (quantization-aware training: ``quanta.prepare_qat`` gives each matched layer its packed class
    in this state, with float master weights as parameters and trainable fake quantizers as submodules;
    ``quanta.convert`` packs it in place). :attr:`fake_quantized` says which.
    """

    float_type: ClassVar[type[nn.Module]]
    supports_qat: ClassVar[bool] = False
    """Whether ``quanta.prepare_qat`` can put this class in its fake-quantized state."""
    weight_codes: torch.Tensor
    act_scale: torch.Tensor
    act_zero: torch.Tensor

    def _set_qweight(self, qt: QTensor, name: str = "weight") -> None:
        """Hold ``qt`` as buffers ``{name}_codes`` and ``{name}_<param>`` (a module may hold several weights)."""
        if not hasattr(self, "_qweight_meta"):
            self._qweight_meta: dict[str, tuple[QScheme, torch.Size, torch.dtype, int | None, tuple[str, ...]]] = {}
            self.act_scheme: QScheme | None = None
            self.act_dynamic = False
        self._qweight_meta[name] = (qt.scheme, qt.shape, qt.dtype, qt.axis, tuple(qt.params))
        self.register_buffer(f"{name}_codes", qt.codes)
        for param, value in qt.params.items():
            self.register_buffer(f"{name}_{param}", value)
        if name == "weight":  # the common single-weight case keeps short attribute names
            self.weight_scheme: QScheme = qt.scheme
            self.weight_shape = qt.shape
            self.weight_dtype = qt.dtype
            self.weight_axis = qt.axis
            self._weight_params = tuple(qt.params)

    @classmethod
    def weight_names(cls, module: nn.Module) -> tuple[str, ...]:
        """Names of the float weights of ``module`` that this class quantizes (``("weight",)`` by default)."""
        return ("weight",)

    @classmethod
    def float_weight(cls, module: nn.Module, name: str) -> torch.Tensor | None:
        """The float tensor of ``module`` that weight ``name`` is quantized from (``getattr`` by default; a twin
        whose weights live in child modules, such as MultiheadAttention's ``out_proj``, maps its names here)."""
        weight = getattr(module, name, None)
        return weight if isinstance(weight, torch.Tensor) else None

    @classmethod
    def quant_axis(cls, name: str) -> int | None:
        """Reduction axis for quantizing weight ``name``: ``None`` when dim 0 is the output channel (Linear, Conv),
        ``0`` for weights stored ``[in, out]`` (GPT-2's Conv1D), so channels and groups run along the input."""
        return None

    @classmethod
    def from_float_weights(cls, module: nn.Module, qweights: Mapping[str, QTensor]) -> QuantModule:
        """Build the packed twin of ``module`` from its quantized weights, keyed by :meth:`weight_names`."""
        return cls.from_float(module, qweights["weight"])

    def _qweight_buffers(self) -> set[str]:
        """Buffer names that hold stored parameters of the packed weights (never cast to another dtype)."""
        return {f"{n}_{p}" for n, meta in self._qweight_meta.items() for p in meta[4]}

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> QuantModule:
        # ``.to(dtype)`` / ``.bfloat16()`` cast every float buffer, which would re-round the stored scales (and
        # break the scheme's scale dtype). The stored parameters and the activation scale only follow the device.
        keep = {
            n: b
            for n, b in self._buffers.items()
            if b is not None and (n in self._qweight_buffers() or n.startswith("act_"))
        }
        order = list(self._buffers.items())
        for n in keep:
            del self._buffers[n]
        try:
            super()._apply(fn, recurse)
        finally:
            for n, b in keep.items():
                device = fn(torch.empty(0, device=b.device)).device if b.device.type != "meta" else b.device
                keep[n] = b.to(device)
            applied = self._buffers  # what super()._apply made of the other buffers (moved or cast)
            self._buffers = {n: keep[n] if n in keep else applied.get(n, b) for n, b in order}  # original order
        return self

    def set_activation(
        self,
        scheme: QScheme,
        dynamic: bool,
        scale: torch.Tensor | None = None,
        zero: torch.Tensor | None = None,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Quantize this module's input with ``scheme``.

        Integer schemes: per token at run time (``dynamic``), or with the calibrated per-tensor ``scale`` / ``zero``
        (buffers ``act_scale`` / ``act_zero``). Other formats (fp8, binary, fixed point) are static per tensor with
        the format's fitted ``params`` (buffers ``act_<name>``); without them, placeholders of the right shape are
        made (``load`` fills them).
        """
        self.act_scheme, self.act_dynamic = scheme, dynamic
        if dynamic:
            return
        if scheme.is_integer:
            self.register_buffer("act_scale", (torch.ones(()) if scale is None else scale).reshape(()).float())
            self.register_buffer("act_zero", (torch.zeros(()) if zero is None else zero).reshape(()).to(torch.int32))
            return
        for name, (trailing, dtype) in scheme.fmt.param_spec(scheme).items():
            value = torch.ones((1, 1, *trailing), dtype=dtype) if params is None else params[name]
            self.register_buffer(f"act_{name}", value.reshape(1, 1, *trailing).to(dtype))

    # -- the fake-quantized state (quantization-aware training) ---------------------------------------------

    @property
    def fake_state(self) -> FakeQuantState | None:
        """The training state of a fake-quantized module, ``None`` when packed."""
        state: FakeQuantState | None = self.__dict__.get("_fake_state")
        return state

    @property
    def fake_quantized(self) -> bool:
        """Whether the module is in its fake-quantized (training) state rather than packed."""
        return self.fake_state is not None

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's float operation on an input and a (dequantized or fake-quantized) weight (linear and
        convolution modules; the fake-quantized state runs it on its own weights)."""
        raise NotImplementedError(f"{type(self).__name__} has no single weighted operation")

    def _unpack_for_training(self) -> None:
        """Drop the packed weights (buffers and metadata): the fake-quantized state holds master weights instead."""
        for name, meta in self._qweight_meta.items():
            self._buffers.pop(f"{name}_codes", None)
            for param in meta[4]:
                self._buffers.pop(f"{name}_{param}", None)
        self._qweight_meta = {}

    def _after_repack(self) -> None:
        """Called once ``quanta.convert`` has set the packed weights again (a kernel module chooses its kernel)."""

    @property
    def input_smoothing(self) -> torch.Tensor | None:
        """Per-feature factors the input is multiplied by before it is quantized (``QuantLinear.set_input_smoothing``,
        the ``smoothinput`` method), or ``None``."""
        return self._buffers.get("act_smooth")

    def _check_packed(self, what: str) -> None:
        if self.fake_quantized:
            raise QuantaError(
                f"{type(self).__name__} is fake-quantized (prepared for QAT) and has no {what} yet: pack it with "
                "quanta.convert(model) first."
            )

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the activation scheme sees it (fake-quantized, same dtype), or unchanged without one.

        The straight-through estimator passes gradients with respect to the input (for attacks and QAT).
        """
        fake = self.fake_state
        if fake is not None:
            return fake.quantize_input(self, x)
        return self.quantize_input_packed(x)

    def quantize_input_packed(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`quantize_input` with this module's activation settings (those of the packed state)."""
        scheme = self.act_scheme
        if scheme is None:
            return x
        fmt = scheme.fmt
        if not scheme.is_integer:
            params = {name: getattr(self, f"act_{name}") for name in fmt.param_spec(scheme)}
            blocks = x.float().reshape(1, 1, -1)  # (rows, groups, group) as formats expect: one per-tensor group
            values = fmt.decode(fmt.encode(blocks, params, scheme, None), params, scheme).reshape(x.shape)
            # values + (x - x) is exactly ``values`` forward, and passes the gradient straight through.
            return (values.detach() + (x.float() - x.float().detach())).to(x.dtype)
        qmin, qmax = int_range(fmt.bits, fmt.signed_codes, scheme.narrow)
        values = x.float()
        if self.act_dynamic:  # one symmetric scale per token (or per sample), computed now
            z0 = symmetric_zero(fmt.bits, fmt.signed_codes)
            dims = self.dynamic_dims(x)
            lo, hi = values.amin(dim=dims, keepdim=True), values.amax(dim=dims, keepdim=True)
            scale = symmetric_scale(lo, hi, qmin - z0, qmax - z0)
            return fake_quantize_affine(values, scale, z0, qmin, qmax).to(x.dtype)
        return fake_quantize_affine(values, self.act_scale, self.act_zero, qmin, qmax).to(x.dtype)

    batched_dims: ClassVar[int | None] = None
    """Dimensions of a batched input when dynamic scales are per sample (convolutions); ``None``: per token."""

    def dynamic_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        """The dims one dynamic scale covers: the last (a token's features), or, for modules with
        ``batched_dims``, every dim but the batch (one scale per sample; the whole tensor when unbatched), so a
        sample's result does not depend on what else is in the batch."""
        if self.batched_dims is None:
            return (-1,)
        return tuple(range(1 if x.dim() == self.batched_dims else 0, x.dim()))

    def qweight_named(self, name: str) -> QTensor:
        """The packed weight ``name`` as a QTensor (views of this module's buffers, no copy)."""
        self._check_packed("packed weights")
        scheme, shape, dtype, axis, param_names = self._qweight_meta[name]
        params = {p: getattr(self, f"{name}_{p}") for p in param_names}
        return QTensor(getattr(self, f"{name}_codes"), params, scheme, shape, dtype, axis)

    @property
    def qweight(self) -> QTensor:
        """The packed weight as a QTensor (views of this module's buffers, no copy)."""
        return self.qweight_named("weight")

    @property
    def qweights(self) -> dict[str, QTensor]:
        """Every packed weight of this module, by name."""
        self._check_packed("packed weights")
        return {name: self.qweight_named(name) for name in self._qweight_meta}

    def dequantized_weight(self, dtype: torch.dtype, name: str = "weight") -> torch.Tensor:
        """The weight ``name`` reconstructed in ``dtype`` (a temporary: nothing is cached); in the fake-quantized
        state, the master weight fake-quantized (with its straight-through gradient)."""
        fake = self.fake_state
        if fake is not None:
            return fake.weight(self, name).to(dtype)
        return self.qweight_named(name).dequantize().to(dtype)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantModule:
        """Build the packed twin of ``module`` around its already quantized weight."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        fake = self.fake_state
        if fake is not None:
            return repr(fake)
        per = " per sample" if self.batched_dims else " per token"
        act = "" if self.act_scheme is None else f", input={self.act_scheme}{per if self.act_dynamic else ''}"
        if "weight" in self._qweight_meta and len(self._qweight_meta) == 1:
            return f"weight={self.weight_scheme}, shape={tuple(self.weight_shape)}{act}"
        weights = ", ".join(f"{n}={meta[0]}" for n, meta in self._qweight_meta.items())
        return f"{weights}{act}"


def register_quant_module(float_type: type[nn.Module]) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: the decorated :class:`QuantModule` replaces ``float_type`` modules."""

    def decorator(cls: type[Any]) -> type[Any]:
        cls.float_type = float_type
        _REGISTRY[float_type] = cls
        return cls

    return decorator


def quant_class_for(module: nn.Module) -> type[QuantModule] | None:
    """The quantized twin class for ``module``'s exact type, or ``None`` when there is none."""
    _load_builtin_modules()
    return _REGISTRY.get(type(module))


def registered_types() -> list[type[nn.Module]]:
    """Float module types that have a quantized twin."""
    _load_builtin_modules()
    return list(_REGISTRY)


def fake_quantized_modules(model: nn.Module) -> list[tuple[str, QuantModule]]:
    """``(name, module)`` for every module of ``model`` in its fake-quantized state (prepared for QAT)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantModule) and m.fake_quantized]


def qat_types() -> list[type[nn.Module]]:
    """Float module types whose quantized twin trains fake-quantized (``quanta.prepare_qat``)."""
    _load_builtin_modules()
    return [t for t, cls in _REGISTRY.items() if cls.supports_qat]


def _load_builtin_modules() -> None:
    import quanta.nn  # noqa: F401  (importing the package registers every module file in it)
