"""Observers that choose a clipping range from the distribution: percentile, MSE-optimal, KL-divergence.

They keep a bounded uniform sample of everything seen (random keys, the smallest kept, seeded), so memory stays
fixed whatever the calibration set's size, and compute the range from it when asked.
"""

from __future__ import annotations

import torch

from quanta.observers.base import Observer, register_observer


class _Sampling(Observer):
    def __init__(self, max_samples: int = 1 << 20, seed: int = 0) -> None:
        self.max_samples = max_samples
        self.seed = seed

    def _update(self, x: torch.Tensor) -> None:
        if not hasattr(self, "sample_"):
            self.sample_ = x.new_empty(0)
            self.keys_ = x.new_empty(0)
            self.seen_ = 0
            self.generator_ = torch.Generator().manual_seed(self.seed)
            self.min_, self.max_ = float("inf"), float("-inf")
        lo, hi = (float(v) for v in torch.aminmax(x))
        self.min_, self.max_ = min(self.min_, lo), max(self.max_, hi)
        # Every value seen gets a uniform random key; keeping the smallest keys is a uniform sample without
        # replacement of the whole stream, whatever the batch sizes.
        keys = torch.cat([self.keys_, torch.rand(x.numel(), generator=self.generator_)])
        pool = torch.cat([self.sample_, x])
        if pool.numel() > self.max_samples:
            keys, keep = torch.topk(keys, self.max_samples, largest=False)
            pool = pool[keep]
        self.sample_, self.keys_ = pool, keys
        self.seen_ += x.numel()


@register_observer
class PercentileObserver(_Sampling):
    """The ``percentile``-th and ``100 - percentile``-th percentiles (default 99.99 / 0.01)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 20, seed: int = 0) -> None:
        super().__init__(max_samples, seed)
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        self._seen()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=torch.float64)
        lo, hi = torch.quantile(self.sample_.double(), q).tolist()
        return min(lo, 0.0) if self.min_ < 0 else lo, hi


@register_observer
class MSEObserver(_Sampling):
    """The clipping of the observed range that minimises the int8 (or ``bits``) quantization MSE of the sample."""

    name = "mse"

    def __init__(self, bits: int = 8, ratios: int = 64, max_samples: int = 1 << 20, seed: int = 0) -> None:
        super().__init__(max_samples, seed)
        self.bits, self.ratios = bits, ratios

    def range(self) -> tuple[float, float]:
        self._seen()
        x = self.sample_[: 1 << 16]  # the sample is already uniform: a prefix of it is one too
        levels = (1 << self.bits) - 1

        def error(lo: float, hi: float) -> float:
            scale = max(hi - lo, 1e-12) / levels
            zero = round(-lo / scale)
            q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
            return float(((q - zero) * scale - x).pow(2).mean())

        # Coordinate search: the upper clip with the lower one fixed, then the lower, then the upper again.
        ratios = torch.linspace(0.05, 1.0, self.ratios).tolist()
        lo, hi = min(self.min_, 0.0), max(self.max_, 0.0)
        for side in ("hi", "lo", "hi"):
            if side == "hi":
                hi = min((max(self.max_, 0.0) * r for r in ratios), key=lambda h: error(lo, h))
            else:
                lo = min((min(self.min_, 0.0) * r for r in ratios), key=lambda v: error(v, hi))
        return lo, hi


@register_observer
class KLObserver(_Sampling):
    """TensorRT-style calibration: the symmetric threshold whose quantized histogram has the least KL divergence.

    ``|x|`` is histogrammed in ``bins`` bins; for each candidate threshold the clipped histogram is compared with
    its ``2**(bits-1)``-level quantization.
    """

    name = "kl"

    def __init__(self, bits: int = 8, bins: int = 2048, max_samples: int = 1 << 20, seed: int = 0) -> None:
        super().__init__(max_samples, seed)
        self.bits, self.bins = bits, bins

    def range(self) -> tuple[float, float]:
        self._seen()
        mag = self.sample_.abs().double()
        top = float(mag.max())
        if top == 0.0:
            return 0.0, 0.0
        hist = torch.histc(mag, bins=self.bins, min=0.0, max=top)
        levels = 1 << (self.bits - 1)
        best_i, best_kl = self.bins, float("inf")
        for i in range(levels, self.bins + 1, max(1, (self.bins - levels) // 128)):
            p = hist[:i].clone()
            p[-1] += hist[i:].sum()  # outliers are clipped into the last kept bin
            # Quantize the i bins into `levels` groups, spreading each group's mass over its non-empty bins.
            edges = torch.linspace(0, i, levels + 1).round().long()
            q = torch.zeros_like(p)
            for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
                chunk = hist[a:b]
                nonzero = chunk > 0
                if int(nonzero.sum()) > 0:
                    q[a:b][nonzero] = float(chunk.sum()) / int(nonzero.sum())
            mask = p > 0
            p_n, q_n = p / p.sum(), q / max(float(q.sum()), 1e-300)
            kl = float((p_n[mask] * torch.log(p_n[mask] / q_n[mask].clamp(min=1e-12))).sum())
            if kl < best_kl:
                best_i, best_kl = i, kl
        threshold = (best_i + 0.5) * top / self.bins
        return (-threshold if self.min_ < 0 else 0.0), threshold
