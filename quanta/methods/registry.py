"""The method registry: each post-training method registers itself from its own file, under its paper's short name.

Methods act at one of three stages of ``quanta.quantize``, so they compose without knowing about each other:

* ``transform``  rewrites the float model before anything is quantized (``cle``);
* ``rounding``   turns one float weight into a QTensor (``rtn``, the default; ``adaround``); at most one per layer;
* ``correction`` adjusts the quantized model afterwards (``bc``, bias correction).

A recipe names a combination by joining names with ``_`` in the preset's single method slot (``w4a8-cle_bc``,
``w4a16-g32-cle_adaround``); the stage, not the spelling, fixes the order. Adding a method is one new file that
calls :func:`register_method`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from quanta.errors import UnsupportedError
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = [
    "Method",
    "Methods",
    "TransformTarget",
    "available_methods",
    "get_method",
    "parse_methods",
    "register_method",
]

Stage = Literal["transform", "rounding", "correction"]
STAGES: tuple[Stage, ...] = ("transform", "rounding", "correction")

Transform = Callable[[nn.Module, dict[str, "TransformTarget"], list[Any]], None]
"""``(model, {layer name it applies to: that layer's plan}, calibration steps)``: rewrites the float model in
place (``cle``, ``smoothquant``, ``awq``)."""
Collect = Callable[[nn.Module, Sequence[str], list[Any]], Any]
"""``(float model, layer names, calibration steps) -> statistics`` gathered before any layer is replaced."""
Round = Callable[[str, nn.Module, QScheme, Any], QTensor]
"""``(layer name, float layer, weight scheme, statistics) -> QTensor``."""
Correct = Callable[[nn.Module, dict[str, nn.Module], list[Any]], None]
"""``(quantized model, {name: float layer it replaced}, calibration steps)``: adjusts the model in place."""


@dataclass(frozen=True)
class TransformTarget:
    """What a transform knows of one layer: its weight scheme and the rounding method that will quantize it."""

    scheme: QScheme | None
    rounding: Method


@dataclass(frozen=True)
class Method:
    """One registered post-training method.

    Args:
        name: short name as a recipe writes it (``[a-z][a-z0-9]*``: ``_`` joins methods).
        stage: ``transform``, ``rounding`` or ``correction``.
        summary: one line for ``quanta recipes``.
        needs_data: calibration data is required.
        transform / collect + round / correct: the work, as the stage asks.
        check: why a weight scheme cannot be used with this method (``None``: it can).
        layers: module types the method handles; others fall back to RTN (rounding) or are left alone.
        fits_grid: a rounding method that chooses its own grid (range) per group (``gptq``'s error-minimising
            search), so transforms leave clipping to it.
    """

    name: str
    stage: Stage
    summary: str
    needs_data: bool = False
    transform: Transform | None = None
    collect: Collect | None = None
    round: Round | None = None
    correct: Correct | None = None
    check: Callable[[QScheme], str | None] | None = None
    layers: tuple[type[nn.Module], ...] | None = None
    fits_grid: bool = False

    def handles(self, module: nn.Module) -> bool:
        return self.layers is None or isinstance(module, self.layers)


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (its file calls this at import)."""
    if "_" in method.name or method.stage not in STAGES:
        raise UnsupportedError(f"method {method.name!r}: names have no '_' and stage is one of {STAGES}.")
    _REGISTRY[method.name] = method
    return method


def _load_builtin() -> None:
    import quanta.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def available_methods() -> list[str]:
    """Registered method names."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        UnsupportedError: listing the available methods.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise UnsupportedError(f"method {name!r} is not available; available: {', '.join(available_methods())}.")
    return _REGISTRY[name]


@dataclass(frozen=True)
class Methods:
    """A parsed combination: the transforms, the one rounding (``rtn`` unless named) and the corrections."""

    transforms: tuple[Method, ...]
    rounding: Method
    corrections: tuple[Method, ...]

    @property
    def all(self) -> tuple[Method, ...]:
        return (*self.transforms, self.rounding, *self.corrections)

    @property
    def needs_data(self) -> bool:
        return any(m.needs_data for m in self.all)


def parse_methods(text: str) -> Methods:
    """Parse a recipe's method field: one name, or names joined by ``_`` (``cle_bc``, ``cle_adaround_bc``).

    Raises:
        UnsupportedError: an unknown name, a name given twice, or two rounding methods.

    Example:
        >>> [m.name for m in parse_methods("bc_cle").all]
        ['cle', 'rtn', 'bc']
    """
    names = text.split("_")
    if len(set(names)) != len(names):
        raise UnsupportedError(f"method {text!r} names a method twice; join distinct methods with '_'.")
    methods = [get_method(n) for n in names]
    roundings = [m for m in methods if m.stage == "rounding"]
    if len(roundings) > 1:
        raise UnsupportedError(
            f"method {text!r} combines {' and '.join(m.name for m in roundings)}: a weight has one rounding; keep one."
        )
    return Methods(
        transforms=tuple(m for m in methods if m.stage == "transform"),
        rounding=roundings[0] if roundings else get_method("rtn"),
        corrections=tuple(m for m in methods if m.stage == "correction"),
    )


def calibration_list(calib: Iterable[Any] | None) -> list[Any] | None:
    """Calibration steps as a list: methods make several passes, and a generator can be read only once."""
    return None if calib is None else list(calib)
