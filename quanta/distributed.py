"""Calibration statistics accumulated across processes (torch.distributed: gloo on CPU, nccl on GPU), with the
same bits as one process.

Each rank calibrates on its own contiguous part of the calibration steps; the per-layer Hessians ``E[x x^T]``
that GPTQ and AdaRound need are then combined across ranks. Floating-point sums depend on their order, and an
``all_reduce`` leaves the order to the backend, so the sum is fixed instead:

- every calibration step contributes one float64 partial ``sum_rows x x^T`` (its *chunk*);
- the partials of the ``n`` steps are added along one binary tree over the global step indices: a node covering
  steps ``[lo, hi)`` is (its first ``ceil((hi - lo) / 2)`` steps) + (the rest), so every run, on any number of
  processes, performs the same additions on the same values;
- ``2^k`` ranks own the ``2^k`` nodes of depth ``k`` (:func:`shard` gives a rank its steps); each sums its subtree
  as the steps arrive, keeping at most ``log2(n) + 1`` partials per layer; the subtree sums are all-gathered and
  every rank adds them up the tree's top levels.

So the codes of a 2-rank run equal the single-process run's bit for bit (tests/test_distributed.py spawns 2 gloo
ranks). Use it by wrapping the quantize call on every rank::

    with quanta.distributed.across():          # the default process group
        quanta.lm.quantize_sequential(model, "w4a16-g128-gptq", quanta.distributed.shard(steps))

Every rank ends with the same quantized model. AWQ's and SmoothQuant's activation statistics are combined the same
way: per-channel maxima (exact in any order, :func:`combine_max`), means as fixed-tree float64 sums, and sampled
rows drawn per step with a generator seeded by the global step index, gathered in step order
(:func:`gather_rows`). Static activation ranges from min/max observers are combined exactly too; the observers
that keep a sample of the data (percentile, MSE, KL) or a moving average are not: under :func:`across` they are
refused (UnsupportedError) rather than silently diverging between ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from quanta.errors import QuantaError, UnsupportedError

__all__ = [
    "TreeSum",
    "across",
    "active",
    "combine",
    "combine_count",
    "combine_max",
    "gather_rows",
    "refuse",
    "shard",
    "step_range",
    "tree_split",
]

T = TypeVar("T")


def tree_split(lo: int, hi: int) -> int:
    """Where the node over steps ``[lo, hi)`` splits: its left child covers ``[lo, mid)``."""
    return lo + (hi - lo + 1) // 2


def _node(n: int, depth: int, index: int) -> tuple[int, int]:
    """Steps ``[lo, hi)`` of node ``index`` (left to right) at ``depth`` of the tree over ``n`` steps."""
    lo, hi = 0, n
    for level in reversed(range(depth)):
        mid = tree_split(lo, hi)
        lo, hi = (mid, hi) if (index >> level) & 1 else (lo, mid)
    return lo, hi


class TreeSum:
    """The fixed-tree sum of the partials of steps ``[lo, hi)`` of ``n``, fed one partial at a time in step order.

    Example:
        >>> s = TreeSum(0, 3, 3)
        >>> for v in (1.0, 2.0, 4.0):
        ...     s.add(torch.tensor(v))
        >>> float(s.result())  # (1 + 2) + 4
        7.0
    """

    def __init__(self, lo: int, hi: int, n: int) -> None:
        if not 0 <= lo < hi <= n:
            raise QuantaError(f"a tree sum needs 0 <= lo < hi <= n; got [{lo}, {hi}) of {n}.")
        self.lo, self.hi, self.n = lo, hi, n
        self._next = lo
        # Nodes of the subtree: (left child, right child) -> parent, so finished siblings merge as they appear.
        self._parent: dict[tuple[tuple[int, int], tuple[int, int]], tuple[int, int]] = {}
        pending = [(lo, hi)]
        while pending:
            a, b = pending.pop()
            if b - a > 1:
                mid = tree_split(a, b)
                self._parent[((a, mid), (mid, b))] = (a, b)
                pending += [(a, mid), (mid, b)]
        self._stack: list[tuple[tuple[int, int], torch.Tensor]] = []

    def add(self, partial: torch.Tensor) -> None:
        """The partial of the next step."""
        if self._next >= self.hi:
            raise QuantaError(f"a tree sum over steps [{self.lo}, {self.hi}) got more than {self.hi - self.lo}.")
        self._stack.append(((self._next, self._next + 1), partial))
        self._next += 1
        while len(self._stack) >= 2:
            (left, a), (right, b) = self._stack[-2], self._stack[-1]
            parent = self._parent.get((left, right))
            if parent is None:
                break
            self._stack[-2:] = [(parent, a + b)]

    def result(self) -> torch.Tensor:
        """The sum over all the steps (every one must have been added)."""
        if self._next != self.hi or len(self._stack) != 1:
            raise QuantaError(f"a tree sum over steps [{self.lo}, {self.hi}) got {self._next - self.lo} of them.")
        return self._stack[0][1]


@dataclass(frozen=True)
class _World:
    group: Any
    rank: int
    size: int
    depth: int  # size == 2 ** depth


_ACTIVE: list[_World] = []


def _world(group: Any = None) -> _World:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise QuantaError("quanta.distributed needs torch.distributed initialised: call init_process_group first.")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    depth = size.bit_length() - 1
    if size != 2**depth:
        raise UnsupportedError(
            f"the fixed summation tree gives each rank one subtree, so the world size must be a power of two; "
            f"it is {size}. Use {2**depth} or {2 ** (depth + 1)} ranks."
        )
    return _World(group, rank, size, depth)


@contextlib.contextmanager
def across(group: Any = None) -> Iterator[None]:
    """Within the block, calibration Hessians are summed over the ranks of ``group`` (default: the world).

    Raises:
        QuantaError: torch.distributed is not initialised. UnsupportedError: the world size is not a power of 2.
    """
    _ACTIVE.append(_world(group))
    try:
        yield
    finally:
        _ACTIVE.pop()


def active() -> bool:
    """Whether statistics are being summed across processes (inside :func:`across`)."""
    return bool(_ACTIVE)


def refuse(what: str) -> None:
    """Raise for statistics that are not combined across ranks (called by those methods under :func:`across`)."""
    if _ACTIVE:
        raise UnsupportedError(
            f"{what} are computed on each rank's own data and are not combined across processes yet; run this "
            "recipe in one process, or use a Hessian method (gptq, adaround) under quanta.distributed.across()."
        )


def shard(steps: Sequence[T], group: Any = None) -> list[T]:
    """This rank's part of ``steps``: the contiguous steps of its subtree (every rank must pass the same list)."""
    world = _world(group)
    lo, hi = _node(len(steps), world.depth, world.rank)
    if lo >= hi:
        raise QuantaError(f"{len(steps)} calibration steps cannot feed {world.size} ranks; pass at least that many.")
    return list(steps[lo:hi])


def step_range(local_steps: int) -> tuple[int, int, int]:
    """``(first global step, end, total steps)`` of this rank, from every rank's count (an all-gather); without
    :func:`across`, ``(0, local_steps, local_steps)``.

    Raises:
        QuantaError: the ranks' counts are not the tree's split of the total (steps not split by :func:`shard`).
    """
    if not _ACTIVE:
        return 0, local_steps, local_steps
    world = _ACTIVE[-1]
    sizes = [int(c) for c in _all_gather(torch.tensor([local_steps], dtype=torch.int64))]
    n = sum(sizes)
    expected = [_node(n, world.depth, r) for r in range(world.size)]
    if [hi - lo for lo, hi in expected] != sizes:
        raise QuantaError(
            f"the ranks hold {sizes} calibration steps; the summation tree over {n} needs "
            f"{[hi - lo for lo, hi in expected]}: split the steps with quanta.distributed.shard(steps)."
        )
    lo, hi = expected[world.rank]
    return lo, hi, n


def _all_gather(local: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``local`` (same shape and dtype on every rank), in rank order."""
    import torch.distributed as dist

    world = _ACTIVE[-1]
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local.contiguous(), group=world.group)
    return parts


def combine(local: torch.Tensor) -> torch.Tensor:
    """The whole tree's sum from every rank's subtree sum ``local`` (same shape on every rank), on every rank."""
    if not _ACTIVE:
        return local
    parts = _all_gather(local)
    while len(parts) > 1:  # the top levels of the tree, pairwise, left to right
        parts = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
    return parts[0]


def combine_count(local: int) -> int:
    """The sum of an integer over the ranks (exact)."""
    if not _ACTIVE:
        return local
    import torch.distributed as dist

    total = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(total, group=_ACTIVE[-1].group)
    return int(total)


def combine_max(local: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over the ranks (exact in any order), on every rank."""
    if not _ACTIVE:
        return local
    return torch.stack(_all_gather(local)).amax(dim=0)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows ``(n_r, C)`` concatenated in rank order, which is global step order for steps split by
    :func:`shard` (ranks may hold different numbers of rows), on every rank."""
    if not _ACTIVE:
        return local
    sizes = [int(c) for c in _all_gather(torch.tensor([local.shape[0]], dtype=torch.int64))]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    return torch.cat([part[:size] for part, size in zip(_all_gather(padded), sizes, strict=True)])
