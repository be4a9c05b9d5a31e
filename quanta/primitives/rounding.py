"""Rounding modes: round-half-to-even (torch's default) and unbiased stochastic rounding."""

from __future__ import annotations

import torch

__all__ = ["ROUNDINGS", "round_values", "stochastic_round"]

ROUNDINGS = ("rne", "sr")
"""``rne``: round half to even (deterministic); ``sr``: stochastic rounding, unbiased in expectation."""


def stochastic_round(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``x`` down or up at random so that ``E[round(x)] == x``.

    Rounds up when ``u < x - floor(x)`` for ``u ~ U[0, 1)``, i.e. with probability ``x - floor(x)``. Pass a seeded
    ``generator`` for reproducible results; ``None`` uses torch's global generator.
    """
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    low = torch.floor(x)
    # Compare rather than add: floor(x + u) rounds x + u first, which biases large magnitudes.
    return low + (noise < (x - low)).to(x.dtype)


def round_values(x: torch.Tensor, rounding: str = "rne", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to integers with the named mode (``"rne"`` or ``"sr"``)."""
    if rounding == "sr":
        return stochastic_round(x, generator)
    return torch.round(x)  # torch.round rounds half to even
