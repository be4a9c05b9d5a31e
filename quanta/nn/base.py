"""The packed state shared by every quantized module, and the registry from float module types to their twins.

A packed module keeps its weight only as a :class:`~quanta.tensor.QTensor`, stored as buffers
(``weight_codes`` plus ``weight_<param>``) so that ``state_dict``, ``.to()`` and ``deepcopy`` work as for any
module. There is no float copy: the forward pass dequantizes on the fly (the reference path) and drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["QuantModule", "quant_class_for", "register_quant_module", "registered_types"]

_REGISTRY: dict[type[nn.Module], type[QuantModule]] = {}


class QuantModule(nn.Module):
    """Base of packed quantized modules: holds the weight as a QTensor in buffers."""

    float_type: ClassVar[type[nn.Module]]
    weight_codes: torch.Tensor

    def _set_qweight(self, qt: QTensor) -> None:
        self.weight_scheme: QScheme = qt.scheme
        self.weight_shape = qt.shape
        self.weight_dtype = qt.dtype
        self.weight_axis = qt.axis
        self._weight_params = tuple(qt.params)
        self.register_buffer("weight_codes", qt.codes)
        for name, value in qt.params.items():
            self.register_buffer(f"weight_{name}", value)

    @property
    def qweight(self) -> QTensor:
        """The packed weight as a QTensor (views of this module's buffers, no copy)."""
        params = {name: getattr(self, f"weight_{name}") for name in self._weight_params}
        return QTensor(
            self.weight_codes, params, self.weight_scheme, self.weight_shape, self.weight_dtype, self.weight_axis
        )

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight reconstructed in ``dtype`` (a temporary: nothing is cached)."""
        return self.qweight.dequantize().to(dtype)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantModule:
        """Build the packed twin of ``module`` around its already quantized weight."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight_scheme}, shape={tuple(self.weight_shape)}"


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


def _load_builtin_modules() -> None:
    import quanta.nn  # noqa: F401  (importing the package registers every module file in it)
