"""Exporters: a quantized model written in another runtime's format, one file per target, found by name.

``quanta.export(model, "onnx", "model.onnx", example_inputs)`` looks the target up in a small registry. Each
target is one module of this package that registers itself with :func:`register_exporter`; the registry imports
the package's modules the first time it is read, so adding a target is one new file and nothing here changes.
Exporters import their third-party packages (onnx, gguf) only when called, so ``import quanta`` needs none of them.
Every exporter writes its file atomically (:func:`quanta.io.atomic_path`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quanta.errors import QuantaError

__all__ = ["ExportResult", "Exporter", "export", "exporters", "register_exporter"]


@dataclass(frozen=True)
class ExportResult:
    """What an exporter wrote.

    Attributes:
        path: the file written.
        format: the target's name (``"onnx"``).
        nbytes: size of the file.
        quantized: packed module name -> how it was written (e.g. ``"int4:g32:asym -> DequantizeLinear int4 b32"``).
        in_float: modules written as float weights (only with an explicit opt-in), with the reason.
        notes: anything else a reader should know (the opset, a fallback taken).
    """

    path: Path
    format: str
    nbytes: int
    quantized: dict[str, str] = field(default_factory=dict)
    in_float: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


Exporter = Callable[..., ExportResult]
"""``fn(model, path, example_inputs, **options) -> ExportResult``: write ``model`` to ``path``."""


@dataclass(frozen=True)
class _Entry:
    fn: Exporter
    summary: str


_REGISTRY: dict[str, _Entry] = {}
_discovered = False


def register_exporter(name: str, summary: str) -> Callable[[Exporter], Exporter]:
    """Decorator: register ``fn`` as the exporter of target ``name`` (lowercase, e.g. ``"onnx"``)."""

    def decorator(fn: Exporter) -> Exporter:
        _REGISTRY[name] = _Entry(fn, summary)
        return fn

    return decorator


def _discover() -> None:
    # Importing a target's module registers it; done once, on first use, so `import quanta` stays light.
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _discovered = True


def exporters() -> dict[str, str]:
    """Registered targets: name -> one-line summary."""
    _discover()
    return {name: entry.summary for name, entry in sorted(_REGISTRY.items())}


def export(
    model: nn.Module,
    format: str,
    path: str | os.PathLike[str],
    example_inputs: Any = None,
    **options: Any,
) -> ExportResult:
    """Write quantized ``model`` to ``path`` in the target ``format``.

    Args:
        model: a model quantized by :func:`quanta.quantize` (or loaded by :func:`quanta.load`).
        format: a registered target (:func:`exporters` lists them), e.g. ``"onnx"``.
        path: the file to write; written atomically (a failed export leaves no file, or the old one).
        example_inputs: an input, or a tuple of inputs, to trace the model with (targets that trace need it).
        **options: target-specific settings (see the target's documentation, docs/export.md).

    Returns:
        An :class:`ExportResult` saying what was written.

    Raises:
        QuantaError: unknown target. UnsupportedError: a scheme or module the target cannot hold (the message lists
        what it supports).

    Example:
        >>> import torch, quanta
        >>> m = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(64, 8)), "w8a16")
        >>> quanta.export(m, "onnx", "/tmp/m.onnx", torch.randn(1, 64)).format  # doctest: +SKIP
        'onnx'
    """
    _discover()
    entry = _REGISTRY.get(str(format).strip().lower())
    if entry is None:
        raise QuantaError(f"unknown export format {format!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}.")
    return entry.fn(model, Path(path), example_inputs, **options)
