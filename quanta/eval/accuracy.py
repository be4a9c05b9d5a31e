"""Top-1 accuracy of a classifier."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def accuracy(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 500,
) -> float:
    """Fraction of correct top-1 predictions over an ``(x, y)`` loader or one ``(x, y)`` pair of tensors."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = zip(
            x.split(batch_size), y.split(batch_size), strict=True
        )
    else:
        batches = data
    correct = total = 0
    with torch.no_grad():
        for xb, yb in batches:
            correct += int((model(xb).argmax(-1) == yb).sum())
            total += int(yb.numel())
    return correct / max(total, 1)
