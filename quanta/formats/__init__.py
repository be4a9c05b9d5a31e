"""Value formats: integer, fixed point, binary, ternary, power-of-two, NF4, minifloats and fitted codebooks.

Every module in this package is imported here, and each registers its format families with
:func:`~quanta.formats.base.register_family`; a new format is a new module, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from quanta.formats.base import Format, FormatFamily, families, get_format, register_family

__all__ = ["Format", "FormatFamily", "families", "get_format", "register_family"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
