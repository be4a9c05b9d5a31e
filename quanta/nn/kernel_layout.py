"""A packed module whose kernel may hold the weight codes (and stored parameters) in its own layout.

A kernel may keep the codes in its own layout: a uint8 tensor that replaces the canonical stream in the
``weight_codes`` buffer (int4: torch's packed blocks), or an opaque object that replaces the buffer and reports its
bytes through :meth:`~KernelLayoutModule.extra_nbytes` (fbgemm's packed linear weight, oneDNN's packed conv weight).
A kernel may also hold the stored parameters in its own tensors (int4 with bf16 scales: torch's ``[K / g, N, 2]``
scale-and-zero table, a non-persistent buffer, instead of ``weight_scale`` / ``weight_zero``). The module then holds
that copy only and converts back on the way out: :attr:`qweights`, ``state_dict()``, files and pickles always carry
the canonical codes and parameters, so checkpoints do not depend on the kernel or the CPU.

Subclasses say which kernel serves them (:meth:`~KernelLayoutModule._find_kernel`), which shape the layout
functions get (:attr:`~KernelLayoutModule.layout_shape`: the weight shape, or the grouped one for a conv) and
whether the kernel stays when its layout is dropped (:attr:`~KernelLayoutModule.keeps_kernel_off_cpu`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from quanta.kernels.base import REFERENCE, Kernel
from quanta.nn.base import QuantModule
from quanta.primitives.packing import packed_nbytes
from quanta.tensor import QTensor

CODES = "weight_codes"


def _replaced(buffers: dict[str, Any], old: Iterable[str], new: Mapping[str, Any]) -> dict[str, Any]:
    """``buffers`` with the ``old`` names removed and ``new`` put where the first of them was (else at the end)."""
    drop = set(old)
    out: dict[str, Any] = {}
    for name, value in buffers.items():
        if name in drop:
            out.update(new)  # at the first old name (later ones only re-set the same keys)
        elif name not in new:
            out[name] = value
    out.update(new)  # no-op when inserted above; else at the end
    return out


class KernelLayoutModule(QuantModule):
    """A :class:`QuantModule` with a single ``weight`` that a kernel may hold in its own layout.

    Subclasses call :meth:`_init_kernel` once their weight and settings are set, and override
    :meth:`_find_kernel` (and :attr:`layout_shape` when the layout functions need another shape).
    """

    # False: leaving the CPU drops the kernel with its layout, and coming back (or loading) chooses one again.
    # True: the kernel's layout is an opaque object or the canonical codes themselves (it packs per call from the
    # buffer), so only the object is dropped and the kernel stays chosen, packing per call from then on.
    keeps_kernel_off_cpu: ClassVar[bool] = False

    def _init_kernel(self) -> None:
        """Start with no kernel, then pick one (call at the end of ``__init__``)."""
        self._kernel: Kernel | None = None
        self._held: Any = None  # the kernel's opaque copy of the codes, when it keeps one instead of the buffer
        self._derived: tuple[str, ...] = ()  # buffers the kernel derives from the codes (``prepare``)
        self._held_params: tuple[str, ...] = ()  # buffers of a kernel's own copy of the stored parameters
        self._choose_kernel()

    def _unpack_for_training(self) -> None:
        for name in (*self._held_params, *self._derived):  # a kernel's own copies go with the packed weight
            self._buffers.pop(name, None)
            self._non_persistent_buffers_set.discard(name)
        self._held, self._held_params, self._derived = None, (), ()
        self._kernel, self.kernel = None, REFERENCE
        super()._unpack_for_training()

    def _after_repack(self) -> None:
        self._init_kernel()

    def _find_kernel(self) -> Kernel | None:
        """The kernel for the current schemes and shape, or ``None`` for the reference path."""
        raise NotImplementedError

    @property
    def layout_shape(self) -> torch.Size:
        """The shape the kernel's layout functions get (the weight shape unless a subclass says otherwise)."""
        return self.weight_shape

    # -- kernel choice and the codes' layout ------------------------------------------------------------------

    def _layout_of(self, kernel: Kernel | None) -> Kernel | None:
        return kernel if kernel is not None and kernel.to_layout is not None else None

    @property
    def kernel_weight(self) -> Any:
        """The kernel's own copy of the codes: the ``weight_codes`` buffer, or an opaque packed object."""
        return self._held if self._held is not None else self.weight_codes

    def _codes_in_layout(self) -> bool:
        """Whether the codes are held in the kernel's layout (an opaque object, or a relaid ``weight_codes``)."""
        if self._held is not None:
            return True
        return not self.keeps_kernel_off_cpu and self._layout_of(self._kernel) is not None

    def canonical_codes(self) -> torch.Tensor:
        """The weight codes as the canonical packed stream (a converted temporary when a kernel holds its own)."""
        owner = self._layout_of(self._kernel)
        if owner is None or owner.from_layout is None or not self._codes_in_layout():
            return self.weight_codes
        codes: torch.Tensor = owner.from_layout(self.kernel_weight, self.layout_shape, self.weight_scheme)
        return codes

    def _holds_own(self) -> bool:
        """Whether the module holds codes or parameters in its kernel's layout (not the canonical buffers)."""
        return self._codes_in_layout() or bool(self._held_params)

    def canonical_params(self) -> dict[str, torch.Tensor]:
        """The weight's stored parameters by name (converted temporaries when a kernel holds its own copy)."""
        if not self._held_params:
            return {p: getattr(self, f"weight_{p}") for p in self._weight_params}
        kernel = self._kernel
        assert kernel is not None and kernel.params_from_layout is not None
        held = {name.removeprefix("weight_"): getattr(self, name) for name in self._held_params}
        return kernel.params_from_layout(held, self.weight_shape, self.weight_scheme)

    def _hold_params(self, kernel: Kernel | None, canonical: Mapping[str, torch.Tensor]) -> None:
        """Keep the stored parameters ``canonical`` in ``kernel``'s tensors when it takes them, else as buffers."""
        convert = None if kernel is None else kernel.params_to_layout
        held = None if convert is None else convert(canonical, self.weight_shape, self.weight_scheme)
        new = {f"weight_{n}": v for n, v in (canonical if held is None else held).items()}
        old = self._held_params or tuple(f"weight_{p}" for p in self._weight_params)
        self._buffers = _replaced(self._buffers, old, new)
        self._non_persistent_buffers_set.difference_update(old)
        self._held_params = () if held is None else tuple(new)
        self._non_persistent_buffers_set.update(self._held_params)  # state_dict() writes the canonical ones

    def _qweight_buffers(self) -> set[str]:
        return super()._qweight_buffers() | set(self._held_params)  # a held table is never cast either

    def _hold(self, kernel: Kernel | None, canonical: torch.Tensor) -> None:
        """Keep ``canonical`` in ``kernel``'s layout: as the ``weight_codes`` buffer, or as an opaque object."""
        owner = self._layout_of(kernel)
        held = (
            canonical
            if owner is None or owner.to_layout is None
            else owner.to_layout(canonical, self.layout_shape, self.weight_scheme)
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

    def _may_choose_again(self) -> bool:
        """Whether the kernel was dropped as the codes left the CPU, and they are back to choose one again."""
        if self.fake_quantized:  # no packed weight to hold in a layout until convert packs it
            return False
        return not self.keeps_kernel_off_cpu and self._kernel is None and self._on_cpu()

    def _choose_kernel(self) -> None:
        """Pick the kernel for the current schemes and put the codes in its layout (one copy either way)."""
        canonical, params = self.canonical_codes(), self.canonical_params()
        kernel = self._find_kernel()
        self._hold(kernel, canonical)
        self._hold_params(kernel, params)
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

    def _apply(self, fn: Any, recurse: bool = True) -> KernelLayoutModule:
        # A kernel's layout lives in CPU memory (an fbgemm or oneDNN object cannot move at all): leaving the CPU
        # puts the canonical codes back in their buffer, which then moves like any buffer; coming back picks a
        # kernel again (unless the kernel stayed: it then packs per call).
        if self._holds_own() and fn(torch.empty(0)).device.type != "cpu":
            canonical, params = self.canonical_codes(), self.canonical_params()
            self._hold(None, canonical)
            self._hold_params(None, params)
            if not self.keeps_kernel_off_cpu:
                self._kernel, self.kernel = None, REFERENCE
                self._prepare_kernel()
        super()._apply(fn, recurse)
        if self._may_choose_again():
            self._choose_kernel()
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry the canonical codes: a kernel's layout depends on the CPU it was made on
        # (and a packed object is not a tensor); __setstate__ picks the kernel again where the copy lands.
        state: dict[str, Any] = super().__getstate__()
        if not self._holds_own():
            return state
        params = {f"weight_{n}": v for n, v in self.canonical_params().items()}
        buffers = _replaced(state["_buffers"], self._held_params, params) if self._held_params else state["_buffers"]
        buffers = _replaced(buffers, [CODES], {CODES: self.canonical_codes()})
        non_persistent = state["_non_persistent_buffers_set"] - set(self._held_params)
        return {
            **state,
            "_buffers": buffers,
            "_non_persistent_buffers_set": non_persistent,
            "_held": None,
            "_held_params": (),
            "_kernel": None,
            "kernel": REFERENCE,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_held_params", ())  # pickles from before kernels held parameters
        self.__dict__.setdefault("_derived", ())  # conv pickles from before kernels derived buffers
        if self._kernel is None and self._on_cpu() and not self.fake_quantized:
            self._choose_kernel()

    def extra_nbytes(self) -> int:
        """Bytes held outside tensors (an opaque packed weight), counted by :func:`quanta.model_nbytes`."""
        kernel = self._kernel
        if self._held is None or kernel is None or kernel.layout_nbytes is None:
            return 0
        return kernel.layout_nbytes(self._held, self.layout_shape)

    def set_activation(self, *args: Any, **kwargs: Any) -> None:
        super().set_activation(*args, **kwargs)
        self._choose_kernel()  # the input settings decide whether an integer (W8A8) kernel can serve the module

    def qweight_named(self, name: str) -> QTensor:
        if name != "weight" or not self._holds_own():
            return super().qweight_named(name)
        scheme, shape, dtype, axis, _ = self._qweight_meta[name]
        return QTensor(self.canonical_codes(), self.canonical_params(), scheme, shape, dtype, axis)

    # -- state dict: canonical codes in and out ----------------------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        start = len(destination)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self._holds_own():
            return
        # The canonical weight, in the order a module without a kernel layout writes it: parameters (bias), the
        # codes and stored parameters, then the other buffers.
        mine = {key: destination.pop(key) for key in list(destination)[start:]}
        weight = {prefix + CODES: self.canonical_codes()}
        weight.update({f"{prefix}weight_{n}": v for n, v in self.canonical_params().items()})
        params = {prefix + n for n in self._parameters}
        destination.update({k: v for k, v in mine.items() if k in params})
        destination.update(weight)
        destination.update({k: v for k, v in mine.items() if k not in params and k not in weight})

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
        if self.fake_quantized:  # master weights and quantizer state: ordinary parameters and buffers
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        if self._codes_in_layout():
            state_dict = self._load_codes(state_dict, prefix, missing_keys, error_msgs)
        if self._held_params:  # canonical buffers again, for torch's loader to check and fill
            self._hold_params(None, self.canonical_params())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self._may_choose_again():  # e.g. a module moved to meta, then loaded with assign=True
            self._choose_kernel()
        else:  # the kernel takes the loaded parameters into its layout (when it holds them)
            self._hold_params(self._kernel, self.canonical_params())
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
