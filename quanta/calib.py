"""Calibration data: running inputs through a model, and stripping labels from ``(x, y)`` loaders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["inputs", "run"]


def inputs(loader: Iterable[Any]) -> Iterator[Any]:
    """Yield only the inputs of a loader that yields ``(inputs, labels)`` pairs.

    Example:
        >>> batches = [(torch.randn(2, 4), torch.tensor([0, 1]))]
        >>> [x.shape for x in inputs(batches)]
        [torch.Size([2, 4])]
    """
    for item in loader:
        yield item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else item


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
            try:
                if isinstance(item, dict):
                    model(**item)
                elif isinstance(item, (tuple, list)):
                    model(*item)
                else:
                    model(item)
            except (TypeError, RuntimeError) as exc:
                shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise QuantaError(
                    f"calibration step {steps} ({shape}) does not fit {type(model).__name__}.forward: {exc}. "
                    "If your loader yields (inputs, labels) pairs, pass quanta.calib.inputs(loader)."
                ) from exc
            steps += 1
    if steps == 0:
        raise QuantaError("the calibration data is empty; pass at least one batch of inputs.")
    return steps
