"""Activation range observers: minmax, moving-average minmax, percentile, MSE-optimal clipping, KL histogram."""

from __future__ import annotations

import importlib
import pkgutil

from quanta.observers.base import Observer, get_observer, observer_names, register_observer

__all__ = ["Observer", "get_observer", "observer_names", "register_observer"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
