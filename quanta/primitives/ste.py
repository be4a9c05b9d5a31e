"""Straight-through estimators: forward the quantized value, pass the gradient where the input was in range."""

from __future__ import annotations

from typing import Any

import torch

from quanta.primitives.affine import dequantize_affine
from quanta.primitives.rounding import round_values

__all__ = ["fake_quantize_affine", "straight_through"]


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, xq: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inside)
        return xq

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def straight_through(x: torch.Tensor, xq: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Return ``xq`` in the forward pass; in the backward pass, ``x`` gets the gradient times ``inside`` (0/1).

    ``xq`` is returned exactly (no ``x + (xq - x).detach()`` rounding), so fake quantization reproduces the
    dequantized values bit for bit.
    """
    return _StraightThrough.apply(x, xq, inside.to(x.dtype))


def fake_quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | int,
    qmin: int,
    qmax: int,
    rounding: str = "rne",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` with torch's straight-through rule.

    The gradient passes where the unclamped code ``round(x / scale) + zero`` lies in ``[qmin, qmax]`` and is zero
    elsewhere, exactly as ``torch.fake_quantize_per_channel_affine``. ``scale``/``zero`` broadcast against ``x``
    and get no gradient (learned-scale methods such as LSQ define their own).

    Example:
        >>> x = torch.tensor([0.26, 9.0], requires_grad=True)
        >>> y = fake_quantize_affine(x, torch.tensor(0.5), 0, -8, 7)
        >>> y.sum().backward(); y.tolist(), x.grad.tolist()
        ([0.5, 3.5], [1.0, 0.0])
    """
    with torch.no_grad():
        # The unclamped codes decide the gradient mask, so they are computed here rather than by quantize_affine.
        raw = round_values(x.detach().float() * (1.0 / scale.float()), rounding, generator) + zero
        inside = (raw >= qmin) & (raw <= qmax)
        codes = raw.clamp(qmin, qmax).to(torch.int32)
        xq = dequantize_affine(codes, scale, zero).to(x.dtype)
    return straight_through(x, xq, inside)
