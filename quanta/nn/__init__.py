"""Quantized twins of torch modules, one file per module type, registered by the float type they replace."""

from __future__ import annotations

import importlib
import pkgutil

from quanta.nn.base import QuantModule, quant_class_for, register_quant_module, registered_types

__all__ = ["QuantModule", "quant_class_for", "register_quant_module", "registered_types"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
