"""LSQ and LSQ+: step sizes (and, for LSQ+, zero points) trained with the weights.

LSQ (Esser et al. 2020, "Learned Step Size Quantization"): ``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``
with ``s`` a parameter. Rounding passes the gradient straight through, so inside the grid ``d x_hat / d s`` is
``round(x / s) - x / s`` and outside it is the clipped level; the step's gradient is scaled by ``1 / sqrt(n * Q_p)``
(``n`` values share the step, ``Q_p`` the positive levels) so steps and weights learn at comparable rates. Initial
step: ``2 mean|x| / sqrt(Q_p)``.

LSQ+ (Bhalgat et al. 2020): an asymmetric grid's offset is learned too, which matters for inputs that are not
centred (after Swish, GELU, or a shifted ReLU). Here the offset is the zero point ``z`` kept as a float parameter
and rounded in the forward pass (straight through), so the trained model still maps onto integer codes and
converts exactly: inside the grid ``d x_hat / d z`` is 0, on clipped values ``-s``. Initialisation follows the
paper: inputs from their min/max (``s = (max - min) / (qmax - qmin)``), weights from ``max(|mu - 3 sigma|,
|mu + 3 sigma|) / 2^(b - 1)`` per step.

The pure functions here do the math; :mod:`quanta.qat.quantizers` holds the modules.
"""

from __future__ import annotations

import math

import torch

__all__ = ["lsq_fake_quantize", "lsq_step", "lsq_weight_step", "lsq_zero", "lsqplus_input_init", "lsqplus_weight_step"]


def lsq_step(s: torch.Tensor, dtype: torch.dtype, factor: float) -> torch.Tensor:
    """The step ``s`` as the packed module will store it (rounded to ``dtype``), exactly, in the forward pass; in
    the backward pass its gradient is multiplied by ``factor`` (LSQ's step-size gradient scale). The value is built
    as ``stored + (t - t)``, which is exactly ``stored``: the usual ``s - s * f + s * f`` would round."""
    scaled = s * factor
    return s.detach().to(dtype).float() + (scaled - scaled.detach())


def lsq_zero(z: torch.Tensor, qmin: int, qmax: int, factor: float) -> torch.Tensor:
    """A learned zero point as the packed module will store it (rounded to an integer code in ``[qmin, qmax]``),
    exactly, in the forward pass; its gradient passes straight through, scaled by ``factor``."""
    scaled = z * factor
    return z.detach().round().clamp(qmin, qmax) + (scaled - scaled.detach())


def lsq_fake_quantize(x: torch.Tensor, s: torch.Tensor, zero: torch.Tensor | int, qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x * (1 / s)) + z, qmin, qmax) - z) * s`` with the packed modules' float operations; rounding
    passes the gradient straight through, clamping passes it inside ``[qmin, qmax]``."""
    inv = 1.0 / s
    v = x * inv
    q = v + (v.detach().round() - v.detach())
    shifted = not (isinstance(zero, int) and zero == 0)
    if shifted:
        q = q + zero
    q = q.clamp(qmin, qmax)
    if shifted:
        q = q - zero
    return q * s


def lsq_weight_step(blocks: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """LSQ's initial step of each block (last dimension): ``2 mean|w| / sqrt(Q_p)``."""
    return 2 * blocks.abs().mean(dim=-1) / torch.sqrt(positive.float().clamp(min=1.0))


def lsqplus_weight_step(blocks: torch.Tensor, bits: int) -> torch.Tensor:
    """LSQ+'s initial step of each block: ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(bits - 1)``."""
    mu = blocks.mean(dim=-1)
    sigma = blocks.std(dim=-1, correction=0) if blocks.shape[-1] > 1 else torch.zeros_like(mu)
    return torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (bits - 1)


def lsqplus_input_init(lo: float, hi: float, qmin: int, qmax: int, asym: bool) -> tuple[float, float]:
    """LSQ+'s initial ``(step, zero point)`` of an input observed in ``[lo, hi]``: the min/max grid, with a float
    zero point for asymmetric schemes (``0`` for symmetric ones, whose zero is fixed by the format)."""
    if asym:
        step = max(hi - lo, 1e-8) / (qmax - qmin)
        return step, qmin - lo / step
    step = max(abs(lo), abs(hi), 1e-8) / max(qmax, 1)
    return step, 0.0


def lsq_input_step(mean_abs: float, positive: int) -> float:
    """LSQ's initial step of an input: ``2 mean|x| / sqrt(Q_p)``."""
    return 2 * mean_abs / math.sqrt(max(positive, 1))
