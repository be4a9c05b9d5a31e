"""Lloyd-Max quantizers: weighted 1-D k-means, batched over groups, exact and fast.

In one dimension the optimal cells of a set of levels are intervals bounded by the midpoints between
neighbouring levels, so each Lloyd iteration needs only the cluster sums between consecutive boundaries.
After one sort, prefix sums of ``w`` and ``w * x`` give every cluster's weight and mean in ``O(k log n)`` per
group, whatever the number of samples; hundreds of iterations on 10^6 values take well under a second.
"""

from __future__ import annotations

import torch

__all__ = ["lloyd_max", "nearest_level"]


def lloyd_max(
    x: torch.Tensor, k: int, weight: torch.Tensor | None = None, max_iter: int = 300, tol: float = 1e-9
) -> torch.Tensor:
    """Fit ``k`` levels minimising the (weighted) squared error of each row of ``x``.

    Args:
        x: values, shape ``(..., n)``; each leading index is fitted independently.
        k: number of levels.
        weight: optional non-negative importance of each value, same shape as ``x``.
        max_iter: iteration cap; stops earlier once no level moves more than ``tol`` times the row's range.
        tol: relative convergence threshold.

    Returns:
        Sorted levels, shape ``(..., k)``, fp32. Rows with fewer than ``k`` distinct values repeat levels.
    """
    xs, order = x.double().sort(dim=-1)
    n = xs.shape[-1]
    ws = torch.ones_like(xs) if weight is None else weight.double().gather(-1, order).clamp(min=0)
    zero = xs.new_zeros((*xs.shape[:-1], 1))
    cw = torch.cat([zero, ws.cumsum(-1)], dim=-1)  # (..., n + 1) prefix sums
    cwx = torch.cat([zero, (ws * xs).cumsum(-1)], dim=-1)
    total = cw[..., -1:]
    # Start from the weighted quantiles: already close to optimal for smooth distributions.
    targets = (torch.arange(k, dtype=torch.float64, device=xs.device) + 0.5) / k * total
    start = torch.searchsorted(cw[..., 1:].contiguous(), targets.contiguous()).clamp(max=n - 1)
    levels = xs.gather(-1, start)
    span = (xs[..., -1:] - xs[..., :1]).clamp(min=1e-30)
    ends_lo = torch.zeros_like(start[..., :1])
    ends_hi = torch.full_like(start[..., :1], n)
    for _ in range(max_iter):
        mids = (levels[..., 1:] + levels[..., :-1]) / 2
        cuts = torch.searchsorted(xs, mids.contiguous())  # values < mid go left
        bounds = torch.cat([ends_lo, cuts, ends_hi], dim=-1)  # (..., k + 1)
        sw = cw.gather(-1, bounds[..., 1:]) - cw.gather(-1, bounds[..., :-1])
        swx = cwx.gather(-1, bounds[..., 1:]) - cwx.gather(-1, bounds[..., :-1])
        new = torch.where(sw > 0, swx / sw.clamp(min=1e-300), levels)  # an empty cell keeps its level
        new, _ = new.sort(dim=-1)
        moved = ((new - levels).abs() / span).max()
        levels = new
        if float(moved) <= tol:
            break
    return levels.float()


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of sorted ``levels`` for each value (ties go to the upper level).

    Args:
        x: values, shape ``(..., m)``.
        levels: sorted levels, shape ``(..., k)`` with the same leading dims as ``x``, or ``(k,)`` shared.

    Returns:
        int32 indices, shape of ``x``.
    """
    mids = (levels[..., 1:] + levels[..., :-1]) / 2
    if mids.dim() == 1:
        return torch.bucketize(x, mids, right=True).to(torch.int32)
    return torch.searchsorted(mids.contiguous(), x.contiguous(), right=True).to(torch.int32)
