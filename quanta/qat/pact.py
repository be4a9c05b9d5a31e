"""PACT (Choi et al. 2018, "Parameterized Clipping Activation"): an input's clipping level ``alpha`` is a parameter
trained with the network.

The input is clipped to ``[lo, alpha]`` and quantized on the uniform grid spanning that range. The gradient follows
the paper's straight-through form: the input gets it where ``lo <= x <= alpha``; ``alpha`` gets the gradient of the
values it clipped (``d y / d alpha = 1`` for ``x > alpha``, the quantization's rounding passing straight through).
``lo`` is 0 for inputs seen non-negative (the post-ReLU case PACT was made for), else the smallest calibrated value
(fixed: PACT learns one clipping level); symmetric schemes clip to ``[-alpha, alpha]``. The paper's L2 penalty on
``alpha`` is the optimizer's weight decay on the ``alpha`` parameters.

``alpha`` starts at the 99.9th percentile of ``|x|`` seen at initialisation (a few values clipped, so ``alpha``
gets gradient from the first step). The forward value is computed exactly as the packed module's static
activation quantizer (scale and zero point from ``[lo, alpha]``), so conversion is exact.
"""

from __future__ import annotations

from typing import Any

import torch

from quanta.primitives.ste import fake_quantize_affine

__all__ = ["PERCENTILE", "pact_clip_level", "pact_fake_quantize"]

PERCENTILE = 0.999


def pact_clip_level(values: torch.Tensor, samples: int = 1 << 20) -> float:
    """The initial clipping level: the :data:`PERCENTILE` quantile of ``|values|`` (on an evenly strided sample of
    at most ``samples`` values, so large activations cost little)."""
    flat = values.detach().abs().flatten()
    if flat.numel() > samples:
        flat = flat[:: flat.numel() // samples]
    k = max(1, min(flat.numel(), round(PERCENTILE * flat.numel())))
    return float(flat.float().kthvalue(k).values)


class _Pact(torch.autograd.Function):
    """Forward: the quantized value, exactly. Backward: PACT's straight-through gradients of ``clamp(x, lo, alpha)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: torch.Tensor, alpha: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, lo, alpha)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, lo, alpha = ctx.saved_tensors
        above, below = x > alpha, x < lo
        inside = ~(above | below)
        return grad * inside, (grad * below).sum().reshape(lo.shape), (grad * above).sum().reshape(alpha.shape), None


def pact_fake_quantize(
    x: torch.Tensor,
    lo: torch.Tensor,
    alpha: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """The quantized value of ``x`` on the grid ``(scale, zero)`` (computed from ``[lo, alpha]``), exactly, with
    PACT's gradients: ``x`` gets the gradient inside ``[lo, alpha]``, ``alpha`` that of the values above it, and
    ``lo`` (when it is ``-alpha``, so a tensor with gradient) that of the values below it."""
    with torch.no_grad():
        value = fake_quantize_affine(x.detach(), scale, zero, qmin, qmax)
    return _Pact.apply(x, lo, alpha, value)
