"""Lloyd-Max quantizers: weighted 1-D k-means, batched over groups, exact and fast.

In one dimension the optimal cells of a set of levels are intervals bounded by the midpoints between
neighbouring levels, so each Lloyd iteration needs only the cluster sums between consecutive boundaries.
After one sort, prefix sums of ``w``, ``w * x`` and ``w * x^2`` give every cluster's weight, mean and error in
``O(k log n)`` per group, whatever the number of samples; hundreds of iterations on 10^6 values take a fraction
of a second.

Lloyd's iteration only finds a local optimum, and which one depends on the start: quantile starts crowd the
levels into the bulk of heavy-tailed data, uniform starts waste levels in empty tails. So rows of up to
``DP_POINTS`` values are solved exactly by dynamic programming (1-D k-means has optimal contiguous cells), and
longer rows are fitted from four starts (the optimum over ``DP_POINTS`` equal-count runs; the quantiles of the
density to the power 1/3, the asymptotically optimal level density of Panter and Dite; weighted quantiles; a
uniform grid over the range), keeping the one with the lowest error, or the row's distinct values themselves
when there are at most k of them (then the error is zero).
"""

from __future__ import annotations

import torch

__all__ = ["lloyd_max", "nearest_level"]

DP_POINTS = 32
"""Rows of up to this many values are fitted exactly by dynamic programming; longer rows start from the optimum
over this many equal-count runs and are refined by Lloyd iterations."""


class _SortedSums:
    """Sorted values with prefix sums of w, w*x and w*x^2 along the last dim (fp64)."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor | None) -> None:
        self.xs, order = x.double().sort(dim=-1)
        ws = torch.ones_like(self.xs) if weight is None else weight.double().gather(-1, order).clamp(min=0)
        if weight is not None:  # a row whose weights are all zero says nothing: fit it unweighted
            ws = torch.where(ws.sum(-1, keepdim=True) > 0, ws, torch.ones_like(ws))
        zero = self.xs.new_zeros((*self.xs.shape[:-1], 1))
        self.cw = torch.cat([zero, ws.cumsum(-1)], dim=-1)  # (..., n + 1)
        self.cwx = torch.cat([zero, (ws * self.xs).cumsum(-1)], dim=-1)
        self.cwxx = torch.cat([zero, (ws * self.xs * self.xs).cumsum(-1)], dim=-1)
        self.n = self.xs.shape[-1]

    def rows(self, keep: torch.Tensor) -> _SortedSums:
        """The same sums for a subset of rows (leading dims flattened), ``keep`` a boolean mask."""
        sub = object.__new__(_SortedSums)
        for name in ("xs", "cw", "cwx", "cwxx"):
            value = getattr(self, name)
            setattr(sub, name, value.reshape(-1, value.shape[-1])[keep.reshape(-1)])
        sub.n = self.n
        return sub

    def cells(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weight, weighted sum and weighted sum of squares of each level's cell, each ``(..., k)``."""
        mids = (levels[..., 1:] + levels[..., :-1]) / 2
        cuts = torch.searchsorted(self.xs, mids.contiguous())  # values < mid go to the lower level
        lo = torch.zeros_like(cuts[..., :1])
        bounds = torch.cat([lo, cuts, lo + self.n], dim=-1)  # (..., k + 1)
        a, b = bounds[..., :-1], bounds[..., 1:]
        return (
            self.cw.gather(-1, b) - self.cw.gather(-1, a),
            self.cwx.gather(-1, b) - self.cwx.gather(-1, a),
            self.cwxx.gather(-1, b) - self.cwxx.gather(-1, a),
        )

    def error(self, levels: torch.Tensor) -> torch.Tensor:
        """Weighted squared error of each row when every value goes to its nearest level."""
        sw, swx, swxx = self.cells(levels)
        return (swxx - 2 * levels * swx + levels * levels * sw).sum(-1)

    def weighted_quantiles(self, probs: torch.Tensor) -> torch.Tensor:
        total = self.cw[..., -1:]
        idx = torch.searchsorted(self.cw[..., 1:].contiguous(), (probs * total).contiguous())
        return self.xs.gather(-1, idx.clamp(max=self.n - 1))


def _starts(s: _SortedSums, k: int) -> list[torch.Tensor]:
    """Starting levels, best first: density^(1/3) quantiles, weighted quantiles, a uniform grid."""
    probs = (torch.arange(k, dtype=torch.float64, device=s.xs.device) + 0.5) / k
    target = probs.expand(*s.xs.shape[:-1], k).contiguous()
    lo, hi = s.xs[..., :1], s.xs[..., -1:]
    # Quantiles of density^(1/3): histogram the range, take counts^(1/3), invert its cumulative sum.
    bins = max(4 * k, 16)
    edges = lo + (hi - lo) * torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=s.xs.device)
    idx = torch.searchsorted(s.xs, edges.contiguous()).clamp(max=s.n)
    idx[..., -1] = s.n
    mass = (s.cw.gather(-1, idx[..., 1:]) - s.cw.gather(-1, idx[..., :-1])).clamp(min=0) ** (1 / 3)
    cdf = torch.cat([torch.zeros_like(mass[..., :1]), mass.cumsum(-1)], dim=-1)
    cdf = cdf / cdf[..., -1:].clamp(min=1e-300)
    j = torch.searchsorted(cdf.contiguous(), target).clamp(1, bins)
    c0, c1 = cdf.gather(-1, j - 1), cdf.gather(-1, j)
    e0, e1 = edges.gather(-1, j - 1), edges.gather(-1, j)
    cube_root = e0 + (e1 - e0) * ((target - c0) / (c1 - c0).clamp(min=1e-300))
    return [cube_root, s.weighted_quantiles(target), lo + (hi - lo) * probs]


def _distinct_values(s: _SortedSums, k: int) -> torch.Tensor:
    """The first k distinct values of each row (repeating the last): exact for rows with at most k of them,
    such as data that is already quantized, which Lloyd iterations from the other starts can miss."""
    changes = (s.xs[..., 1:] != s.xs[..., :-1]).double()
    rank = torch.cat([torch.zeros_like(s.xs[..., :1]), changes], -1).cumsum(-1)
    wanted = torch.minimum(torch.arange(k, dtype=torch.float64, device=s.xs.device), rank[..., -1:])
    return s.xs.gather(-1, torch.searchsorted(rank.contiguous(), wanted.contiguous()))


def _iterate(s: _SortedSums, levels: torch.Tensor, span: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Lloyd iterations until every row's levels move less than ``tol * span``.

    Most rows converge long before the slowest one, so once half the active rows are done the rest are copied
    out and iterated alone: the total work follows the typical row, not the worst.
    """
    shape = levels.shape
    out = levels.reshape(-1, shape[-1]).clone()
    active = torch.arange(out.shape[0], device=out.device)
    sub, lv, sub_span = s.rows(torch.ones(out.shape[0], dtype=torch.bool)), out, span.reshape(-1, 1)
    for _ in range(max_iter):
        sw, swx, _ = sub.cells(lv)
        new = torch.where(sw > 0, swx / sw.clamp(min=1e-300), lv).sort(dim=-1).values  # empty cells stay put
        done = ((new - lv).abs() / sub_span).amax(-1) <= tol
        lv = new
        if bool(done.all()):
            break
        if float(done.float().mean()) >= 0.5:
            out[active] = lv
            keep = ~done
            active, lv, sub_span, sub = active[keep], lv[keep], sub_span[keep], sub.rows(keep)
    out[active] = lv
    return out.reshape(shape)


def _optimal_on_cuts(s: _SortedSums, k: int, max_points: int) -> torch.Tensor:
    """Levels of the best partition whose cuts lie on at most ``max_points`` equal-count boundaries (exact DP).

    With ``n <= max_points`` every position is a boundary and the result is the exact optimum of 1-D k-means
    (Lloyd-Max), which Lloyd iterations started elsewhere often miss: the cost of a run of sorted values is
    ``sum w x^2 - (sum w x)^2 / sum w`` from the prefix sums, and ``D_m(b) = min_a D_{m-1}(a) + cost(a, b)``.
    Longer rows are cut into ``max_points`` runs of equal count; the result is then a start for Lloyd.
    """
    n = s.n
    m_points = min(n, max_points)
    pos = torch.round(torch.linspace(0, n, m_points + 1, dtype=torch.float64, device=s.xs.device)).long()
    flat = [t.reshape(-1, t.shape[-1])[:, pos] for t in (s.cw, s.cwx, s.cwxx)]
    xs = s.xs.reshape(-1, n)
    parts = min(k, m_points)
    chunk = max(1, (1 << 22) // (m_points + 1) ** 2)  # rows per batch: bounds the (rows, M+1, M+1) cost matrix
    out = []
    upper = torch.ones(m_points + 1, m_points + 1, dtype=torch.bool, device=xs.device).triu(1)  # a < b
    for start in range(0, xs.shape[0], chunk):
        cw, cwx, cwxx = (t[start : start + chunk] for t in flat)
        sw = cw.unsqueeze(1) - cw.unsqueeze(2)  # [r, a, b] = weight of the run between boundaries a and b
        swx = cwx.unsqueeze(1) - cwx.unsqueeze(2)
        swxx = cwxx.unsqueeze(1) - cwxx.unsqueeze(2)
        cost = torch.where(sw > 0, swxx - swx * swx / sw.clamp(min=1e-300), torch.zeros_like(sw)).clamp(min=0)
        cost = torch.where(upper, cost, torch.full_like(cost, float("inf"))).float()
        best = cost[:, 0, :]  # one run: D_1(b)
        back = []
        for _ in range(parts - 1):
            best, arg = (best.unsqueeze(2) + cost).min(dim=1)
            back.append(arg)
        cut = torch.full((cw.shape[0], 1), m_points, dtype=torch.long, device=xs.device)
        cuts = [cut]
        for arg in reversed(back):
            cut = arg.gather(1, cut)
            cuts.append(cut)
        cuts.append(torch.zeros_like(cut))
        bounds = torch.cat(cuts[::-1], dim=1)  # (rows, parts + 1) boundary indices, increasing
        w = cw.gather(1, bounds[:, 1:]) - cw.gather(1, bounds[:, :-1])
        wx = cwx.gather(1, bounds[:, 1:]) - cwx.gather(1, bounds[:, :-1])
        first = xs[start : start + chunk].gather(1, pos[bounds[:, :-1]].clamp(max=n - 1))
        out.append(torch.where(w > 0, wx / w.clamp(min=1e-300), first))  # a weightless run: its first value
    levels = torch.cat(out).reshape(*s.xs.shape[:-1], parts)
    if parts < k:  # fewer values than levels: repeat the last
        levels = torch.cat([levels, levels[..., -1:].expand(*levels.shape[:-1], k - parts)], dim=-1)
    return levels.sort(dim=-1).values


def lloyd_max(
    x: torch.Tensor, k: int, weight: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-6
) -> torch.Tensor:
    """Fit ``k`` levels minimising the (weighted) squared error of each row of ``x``.

    Args:
        x: values, shape ``(..., n)``; each leading index is fitted independently.
        k: number of levels.
        weight: optional non-negative importance of each value, same shape as ``x``.
        max_iter: iteration cap per start; a start stops once no level moves more than ``tol`` times the range.
        tol: relative convergence threshold (1e-6 is far below the fp16/bf16 resolution codebooks are stored in).

    Returns:
        Sorted levels, shape ``(..., k)``, fp32. Rows with fewer than ``k`` distinct values repeat levels.

    Example:
        >>> lloyd_max(torch.tensor([0.0, 0.1, 1.0, 1.1]), 2)
        tensor([0.0500, 1.0500])
    """
    s = _SortedSums(x, weight)
    span = (s.xs[..., -1:] - s.xs[..., :1]).clamp(min=1e-30)
    best = _distinct_values(s, k)
    best_error = s.error(best)
    for start in [_optimal_on_cuts(s, k, DP_POINTS), *_starts(s, k)]:
        levels = _iterate(s, start, span, max_iter, tol)
        error = s.error(levels)
        better = error < best_error
        best = torch.where(better.unsqueeze(-1), levels, best)
        best_error = torch.where(better, error, best_error)
    return best.float()


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
