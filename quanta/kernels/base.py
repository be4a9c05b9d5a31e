"""The kernel contract and registry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from quanta.scheme import QScheme

__all__ = ["REFERENCE", "Kernel", "forced_reference", "kernel_for", "register_kernel"]

REFERENCE = "reference"


@dataclass(frozen=True)
class Kernel:
    """A fast path for one op.

    Attributes:
        name: recorded on the module and in quanta.json.
        op: the module op it implements (``"linear"``).
        applies: static rule on (scheme, weight shape) deciding whether the kernel serves a module.
        input_dtypes: activation dtypes it is fast with; other inputs take the reference path.
        run: ``run(x, module) -> y``.
    """

    name: str
    op: str
    applies: Callable[[QScheme, torch.Size], bool]
    input_dtypes: tuple[torch.dtype, ...]
    run: Callable[..., torch.Tensor]


_KERNELS: list[Kernel] = []


def register_kernel(kernel: Kernel) -> Kernel:
    _KERNELS.append(kernel)
    return kernel


def kernel_for(op: str, scheme: QScheme, shape: torch.Size) -> Kernel | None:
    """The first registered kernel for ``op`` whose rule accepts the scheme and shape, or ``None``."""
    import quanta.kernels  # noqa: F401  (registers the built-in kernels)

    return next((k for k in _KERNELS if k.op == op and k.applies(scheme, shape)), None)


def forced_reference() -> bool:
    """True when ``QUANTA_KERNEL=reference`` asks every module to take the reference path."""
    return os.environ.get("QUANTA_KERNEL", "").strip().lower() == REFERENCE
