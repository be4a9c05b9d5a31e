"""Fast paths for packed modules, registered per (module op, format); each is tested against the reference path.

A kernel is chosen once per module by a static rule on its scheme and shape (never by timing), recorded on the
module (``module.kernel``) and in ``quanta.json``. At run time it is used only for the activation dtype it is
fast with; otherwise, and whenever ``QUANTA_KERNEL=reference`` is set, the module takes the reference path
(dequantize, then the float op), which serves every format.
"""

from __future__ import annotations

import importlib
import pkgutil

from quanta.kernels.base import Kernel, forced_reference, kernel_for, register_kernel

__all__ = ["Kernel", "forced_reference", "kernel_for", "register_kernel"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
