"""Min/max observers: the exact range seen, or its exponential moving average across batches (torch's rule)."""

from __future__ import annotations

import torch

from quanta import distributed
from quanta.observers.base import Observer, register_observer


@register_observer
class MinMaxObserver(Observer):
    """The smallest and largest value over every batch."""

    name = "minmax"
    combinable = True  # the extremes of all ranks' extremes are the extremes of all the data, in any order

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = (float(v) for v in torch.aminmax(x))
        self.min_ = min(lo, getattr(self, "min_", lo))
        self.max_ = max(hi, getattr(self, "max_", hi))

    def combine_ranks(self) -> None:
        seen = hasattr(self, "min_")
        local = torch.tensor([-self.min_, self.max_] if seen else [float("-inf"), float("-inf")], dtype=torch.float64)
        merged = distributed.combine_max(local)
        if bool(torch.isfinite(merged).all()):
            self.min_, self.max_ = -float(merged[0]), float(merged[1])

    def range(self) -> tuple[float, float]:
        self._seen()
        return self.min_, self.max_


@register_observer
class MovingAverageObserver(Observer):
    """``min <- min + c * (batch_min - min)`` (and max alike), starting from the first batch's range."""

    name = "ema"

    def __init__(self, averaging_constant: float = 0.01) -> None:
        self.averaging_constant = averaging_constant

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not hasattr(self, "min_"):
            self.min_, self.max_ = lo, hi
            return
        c = self.averaging_constant
        self.min_ += c * (lo - self.min_)
        self.max_ += c * (hi - self.max_)

    def range(self) -> tuple[float, float]:
        self._seen()
        return self.min_, self.max_
