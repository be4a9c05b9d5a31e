"""Error metrics between a reference tensor and its quantized reconstruction."""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_similarity", "max_abs_error", "mse", "sqnr_db"]


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        from quanta.errors import InvalidTensorError

        raise InvalidTensorError(f"cannot compare tensors of shapes {tuple(x.shape)} and {tuple(y.shape)}.")
    return x.double(), y.double()


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error, computed in float64."""
    a, b = _pair(x, y)
    return float(torch.mean((a - b) ** 2))


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - y)^2)`` in dB (``inf`` when exact)."""
    a, b = _pair(x, y)
    noise = float(torch.sum((a - b) ** 2))
    signal = float(torch.sum(a**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def max_abs_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest absolute element-wise difference."""
    a, b = _pair(x, y)
    return float((a - b).abs().max())


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Cosine of the angle between the flattened tensors (1.0 when both are zero)."""
    a, b = _pair(x, y)
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)
