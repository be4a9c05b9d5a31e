"""One code path for every granularity: per-tensor, per-channel and per-group all become groups of a 2-D view.

A tensor is first viewed as a matrix (rows, cols) whose columns run along the *reduction* dimension
(``in_features`` of a Linear, ``in_channels * kh * kw`` of a Conv, the hidden size of an Embedding).
Then:

* per-tensor  -> one row of ``numel`` columns and one group covering it;
* per-channel -> one group per row (group size = cols);
* per-group N -> groups of N consecutive columns in each row.

When N does not divide ``cols`` the last group of each row is shorter (ragged) instead of an error. Work is
done on at most two 3-D blocks, ``(rows, n_groups, N)`` for the full groups and ``(rows, 1, cols % N)`` for the
ragged tail, so the common case is a zero-copy reshape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from quanta.primitives.checks import check_group_size, normalize_axis

__all__ = ["Grouping", "from_2d", "to_2d"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Grouping:
    """How a (rows, cols) matrix is cut into groups of ``group_size`` columns (the last one may be shorter)."""

    rows: int
    cols: int
    group_size: int

    def __post_init__(self) -> None:
        check_group_size(self.group_size)

    @property
    def n_groups(self) -> int:
        """Groups per row, counting a ragged last group."""
        return -(-self.cols // self.group_size)

    @property
    def param_shape(self) -> tuple[int, int]:
        """Shape of a per-group parameter such as a scale: ``(rows, n_groups)``."""
        return (self.rows, self.n_groups)

    def _blocks(self) -> list[tuple[slice, slice, int]]:
        # (column slice, group slice, group length) of the full block and of the ragged tail.
        g = min(self.group_size, self.cols)
        full_groups = self.cols // g
        split = full_groups * g
        blocks = [(slice(0, split), slice(0, full_groups), g)]
        if split < self.cols:
            blocks.append((slice(split, self.cols), slice(full_groups, full_groups + 1), self.cols - split))
        return blocks

    def reduce(self, fn: Callable[..., Params], *tensors: torch.Tensor | None) -> Params:
        """Compute per-group parameters.

        Args:
            fn: called with 3-D blocks ``(rows, n, g)`` of each tensor (``None`` passes through) and returning a
                dict of tensors shaped ``(rows, n, ...)``.
            tensors: 2-D ``(rows, cols)`` tensors (values, optional importance weights, ...).

        Returns:
            The dict of ``fn``'s outputs for all groups, each shaped ``(rows, n_groups, ...)``.
        """
        parts: list[Params] = []
        for cols, _, g in self._blocks():
            blocks = [None if t is None else t[:, cols].reshape(self.rows, -1, g) for t in tensors]
            parts.append(fn(*blocks))
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}

    def map(self, fn: Callable[[torch.Tensor, Params], torch.Tensor], x: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply an element-wise ``fn(block, block_params)`` group by group and return a ``(rows, cols)`` result.

        ``block`` is ``(rows, n, g)``; each entry of ``block_params`` is sliced to ``(rows, n, ...)``.
        """
        outs = []
        for cols, groups, g in self._blocks():
            block = x[:, cols].reshape(self.rows, -1, g)
            outs.append(fn(block, {k: v[:, groups] for k, v in params.items()}).reshape(self.rows, -1))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def to_2d(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as a (rows, cols) matrix whose columns run along the reduction dimension.

    Args:
        x: any tensor with at least one element.
        axis: ``None`` for the layout of Linear/Conv/Embedding weights (dim 0 is the output channel, every other
            dim is reduced over; a 1-D tensor is one row); an int to name the single reduction axis instead
            (e.g. ``0`` for GPT-2's ``Conv1D`` weight of shape ``[in, out]``).

    Returns:
        A 2-D tensor (a view when possible).
    """
    if x.dim() == 0:
        return x.reshape(1, 1)
    if axis is None:
        return x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)
    axis = normalize_axis(axis, x.dim())
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


def from_2d(x2d: torch.Tensor, shape: torch.Size | tuple[int, ...], axis: int | None) -> torch.Tensor:
    """Invert :func:`to_2d` for a tensor of the original ``shape``."""
    shape = torch.Size(shape)
    if axis is None or len(shape) == 0:
        return x2d.reshape(shape)
    axis = normalize_axis(axis, len(shape))
    moved = list(shape)
    moved.append(moved.pop(axis))
    return x2d.reshape(moved).movedim(-1, axis)
