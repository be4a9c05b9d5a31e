"""The kernel contract and registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from quanta.scheme import QScheme

__all__ = [
    "REFERENCE",
    "Kernel",
    "ParamsRelayout",
    "ParamsRestore",
    "Relayout",
    "any_activation",
    "cpu_multiplies_int8_exactly",
    "forced_reference",
    "kernel_for",
    "register_kernel",
]

REFERENCE = "reference"


def any_activation(act: QScheme | None, dynamic: bool) -> bool:
    """Default activation rule: the kernel serves the module whatever its input scheme (it gets the input after
    :meth:`~quanta.nn.base.QuantModule.quantize_input`)."""
    return True


# (canonical codes, weight shape (N, K), weight scheme) -> the kernel's own copy of the codes (a tensor of the same
# bytes, or an opaque packed object), and back to the canonical codes.
Relayout = Callable[[Any, torch.Size, QScheme], Any]
# (the weight's stored parameters by name, weight shape, weight scheme) -> the kernel's own tensors that hold them
# instead, by name, or None to keep the canonical parameters (this scheme or these values do not qualify).
ParamsRelayout = Callable[[Mapping[str, torch.Tensor], torch.Size, QScheme], dict[str, torch.Tensor] | None]
ParamsRestore = Callable[[Mapping[str, torch.Tensor], torch.Size, QScheme], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Kernel:
    """A fast path for one op.

    Attributes:
        name: recorded on the module and in quanta.json.
        op: the module op it implements (``"linear"``).
        applies: static rule on (weight scheme, weight shape) deciding whether the kernel serves a module.
        input_dtypes: activation dtypes it is fast with; other inputs take the reference path.
        run: ``run(x, module) -> y``.
        activation: static rule on (activation scheme or None, dynamic) that must also accept the module.
        quantizes_input: the module passes ``run`` its raw input and the kernel quantizes it itself (W8A8);
            otherwise ``run`` gets the input after ``quantize_input`` (fake-quantized or unchanged).
        prepare: builds the small derived buffers the kernel needs from the module's codes (e.g. int32 row sums),
            by name; the module registers them as ``kernel_<name>`` (not saved, counted by ``model_nbytes``) and
            rebuilds them after ``load_state_dict``.
        to_layout / from_layout: when set, the module holds its codes in the kernel's layout (one copy: the
            canonical stream is converted, not duplicated); ``from_layout`` must invert ``to_layout`` exactly so
            that ``state_dict`` and files keep the canonical codes. ``to_layout`` returns a uint8 tensor of the
            canonical stream's shape (kept as the ``weight_codes`` buffer) or an opaque object (kept instead of
            the buffer; then ``layout_nbytes`` must say how many bytes it holds, for ``model_nbytes``).
        params_to_layout / params_from_layout: the same for the weight's stored parameters (scale, zero point):
            ``params_to_layout`` returns tensors that replace them (registered as non-persistent ``weight_<name>``
            buffers, counted by ``model_nbytes``) or ``None`` to keep them; ``params_from_layout`` must give the
            canonical parameters back bit for bit, so that ``state_dict``, ``qweight`` and files are unchanged.
        priority: among kernels that accept a module, higher priority wins (then registration order).
        on_codes: runs the op on uint8 input codes, to float or to uint8 codes with fused ReLU / sum, for the int8
            flow between modules (``quanta.nn.int8_flow``; see ``int8_conv.conv_on_codes`` for the arguments);
            ``input_grid(module)`` gives the ``(scale, zero point)`` of the module's uint8 input codes.
    """

    name: str
    op: str
    applies: Callable[[QScheme, torch.Size], bool]
    input_dtypes: tuple[torch.dtype, ...]
    run: Callable[..., torch.Tensor]
    activation: Callable[[QScheme | None, bool], bool] = any_activation
    quantizes_input: bool = False
    prepare: Callable[[Any], dict[str, torch.Tensor]] | None = None
    to_layout: Relayout | None = None
    from_layout: Relayout | None = None
    layout_nbytes: Callable[[Any, torch.Size], int] | None = None
    params_to_layout: ParamsRelayout | None = None
    params_from_layout: ParamsRestore | None = None
    priority: int = 0
    on_codes: Callable[..., torch.Tensor] | None = None
    input_grid: Callable[[Any], tuple[float, int]] | None = None


def cpu_multiplies_int8_exactly() -> bool:
    """True on CPUs with VNNI, whose int8 dot-product instructions accumulate straight into int32.

    Without VNNI (e.g. AVX2-only x86), fbgemm's and oneDNN's u8 x s8 GEMMs multiply with ``vpmaddubsw``, which sums
    pairs of products into *saturating* int16: two full-range products (255 * 127 * 2 > 32767) clip, and the
    result is silently wrong (measured: errors of 10-20% of the output range). Kernels built on those GEMMs apply
    only where this is True; ``torch._int_mm`` stays exact everywhere.
    """
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return vnni is not None and bool(vnni())


_KERNELS: list[Kernel] = []


def register_kernel(kernel: Kernel) -> Kernel:
    _KERNELS.append(kernel)
    return kernel


def kernel_for(
    op: str, scheme: QScheme, shape: torch.Size, act: QScheme | None = None, dynamic: bool = False
) -> Kernel | None:
    """The first registered kernel for ``op`` whose rules accept the weight scheme and shape and the activation
    scheme (``act``, per token when ``dynamic``), or ``None``. Kernels registered with a specific activation rule
    (W8A8) come before the ones that accept any input, so they win when both apply; then higher ``priority``."""
    import quanta.kernels  # noqa: F401  (registers the built-in kernels)

    # Stable sort: kernels with an activation rule first, then by priority; registration order breaks ties.
    ordered = sorted(_KERNELS, key=lambda k: (k.activation is any_activation, -k.priority))
    return next((k for k in ordered if k.op == op and k.applies(scheme, shape) and k.activation(act, dynamic)), None)


def forced_reference() -> bool:
    """True when ``QUANTA_KERNEL=reference`` asks every module to take the reference path."""
    return os.environ.get("QUANTA_KERNEL", "").strip().lower() == REFERENCE
