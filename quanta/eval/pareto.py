"""The Pareto front of (cost, quality) points: the points no other point beats on both at once.

A point ``i`` is *dominated* when some point ``j`` costs no more and is no worse, and is strictly better on at least
one of the two (``cost_j <= cost_i``, ``quality_j >= quality_i``, not both equal). The front is every point that is
not dominated; identical points are all on it (none beats another). A point whose cost or quality is NaN takes no
part: it is never on the front and dominates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quanta.errors import QuantaError

__all__ = ["pareto_front"]


def pareto_front(costs: Sequence[float], qualities: Sequence[float], *, higher_is_better: bool = True) -> list[int]:
    """Indices of the points on the Pareto front (minimum cost, best quality), in increasing cost.

    Sorting by cost (then best quality first) and keeping each point that beats the best quality seen so far finds
    the front in ``O(n log n)``; a point equal to the last kept one is kept too (it is not dominated).

    Args:
        costs: each point's cost (bytes, latency); lower is better.
        qualities: each point's quality, same length.
        higher_is_better: ``True`` for accuracy, ``False`` for perplexity or KL (lower is better).

    Returns:
        The front's indices, ordered by increasing cost (ties by index).

    Raises:
        QuantaError: the sequences differ in length.

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.5, 0.4, 0.9, 0.9])
        [0, 2]
        >>> pareto_front([1, 2, 3], [20.0, 10.0, 15.0], higher_is_better=False)
        [0, 1]
    """
    if len(costs) != len(qualities):
        raise QuantaError(f"pareto_front got {len(costs)} costs and {len(qualities)} qualities; give one of each.")
    sign = 1.0 if higher_is_better else -1.0
    valid = [i for i in range(len(costs)) if not (math.isnan(costs[i]) or math.isnan(qualities[i]))]
    order = sorted(valid, key=lambda i: (costs[i], -sign * qualities[i], i))
    front: list[int] = []
    best: tuple[float, float] | None = None  # (cost, signed quality) of the last point kept
    for i in order:
        point = (float(costs[i]), sign * float(qualities[i]))
        if best is None or point[1] > best[1] or point == best:
            front.append(i)
            best = point
    return front
