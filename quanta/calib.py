"""Calibration data: running inputs through a model, and stripping labels from ``(x, y)`` loaders."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["Fingerprint", "call_step", "inputs", "run"]


def inputs(loader: Iterable[Any]) -> Iterator[Any]:
    """Yield only the inputs of a loader that yields ``(inputs, labels)`` pairs.

    Example:
        >>> batches = [(torch.randn(2, 4), torch.tensor([0, 1]))]
        >>> [x.shape for x in inputs(batches)]
        [torch.Size([2, 4])]
    """
    for item in loader:
        yield item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else item


def call_step(model: nn.Module, item: Any, index: int = 0, **extra: Any) -> Any:
    """``model`` on one calibration step (a tensor, a tuple or list of positional arguments, or a dict of keyword
    arguments), with the keyword arguments ``extra`` added (a step's own keywords win), returning its output.

    Raises:
        QuantaError: the step does not fit ``model.forward`` (wrong types, shapes, or token ids out of range).
    """
    try:
        if isinstance(item, dict):
            return model(**{**extra, **item})
        if isinstance(item, (tuple, list)):
            return model(*item, **extra)
        return model(item, **extra)
    except (TypeError, RuntimeError, IndexError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            raise QuantaError(
                f"calibration step {index} ran out of memory ({exc}); use fewer or shorter calibration steps "
                "(--nsamples, --seqlen), or --offload for a language model."
            ) from exc
        shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
        raise QuantaError(
            f"calibration step {index} ({shape}) does not fit {type(model).__name__}.forward: {exc}. "
            "If your loader yields (inputs, labels) pairs, pass quanta.calib.inputs(loader)."
        ) from exc


def run(model: nn.Module, calib: Iterable[Any]) -> int:
    """Run every calibration step through ``model`` (no gradients) and return how many ran.

    A step is a tensor (``model(x)``), a tuple or list of positional arguments, or a dict of keyword arguments.

    Raises:
        QuantaError: the data is empty, or a step does not fit ``model.forward`` (the message suggests
            :func:`inputs` for ``(x, y)`` loaders).
    """
    steps = 0
    with torch.no_grad():
        for item in calib:
            call_step(model, item, steps)
            steps += 1
    if steps == 0:
        raise QuantaError("the calibration data is empty; pass at least one batch of inputs.")
    return steps


class Fingerprint:
    """A SHA-256 of calibration data, taken as the data is read (a one-shot generator is read only once).

    Every tensor in a step (alone, in a tuple/list, or a dict's values in key order) contributes its dtype, shape
    and bytes, so the same data gives the same hash whatever the run, and any change to it a different one.

    Example:
        >>> fp = Fingerprint()
        >>> steps = list(fp.wrap([torch.zeros(2, 3)]))
        >>> fp.steps, len(fp.hexdigest())
        (1, 64)
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.steps = 0

    def _add(self, item: Any) -> None:
        if isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            self._digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            self._digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                self._digest.update(str(key).encode())
                self._add(item[key])
        elif isinstance(item, (tuple, list)):
            for part in item:
                self._add(part)
        else:
            self._digest.update(repr(item).encode())

    def wrap(self, calib: Iterable[Any]) -> Iterator[Any]:
        """Yield ``calib``'s steps unchanged, hashing each one on the way."""
        for item in calib:
            self._add(item)
            self.steps += 1
            yield item

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
