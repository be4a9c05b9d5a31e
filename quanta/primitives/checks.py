"""Validation of user input shared by every entry point: tensors, bit widths, group sizes and axes."""

from __future__ import annotations

import operator

import torch

from quanta.errors import AxisError, BitWidthError, GroupSizeError, InvalidTensorError, NonFiniteError

__all__ = ["check_bits", "check_finite", "check_float_tensor", "check_group_size", "normalize_axis"]


def check_float_tensor(x: object, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a non-empty, finite, floating-point tensor; raise a quanta error otherwise."""
    if not isinstance(x, torch.Tensor):
        raise InvalidTensorError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor()."
        )
    if not x.is_floating_point():
        raise InvalidTensorError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert it first, e.g. {name}.float()."
        )
    if x.numel() == 0:
        raise InvalidTensorError(f"{name} is empty (shape {tuple(x.shape)}); there is nothing to quantize.")
    if x.is_meta:
        raise InvalidTensorError(f"{name} is on the meta device and holds no values; load its weights first.")
    check_finite(x, name)
    if x.dtype == torch.float64:
        # Everything is computed in fp32: values beyond its range would silently become inf.
        biggest = float(x.abs().max())
        if biggest > torch.finfo(torch.float32).max:
            raise InvalidTensorError(
                f"{name} holds a value of magnitude {biggest:.3g}, beyond the float32 range "
                f"({torch.finfo(torch.float32).max:.3g}) in which quanta computes; rescale the tensor first."
            )
    return x


def cast_back(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast fp32 results to ``dtype``, saturating where its range is smaller (fp16) instead of overflowing to inf."""
    limit = torch.finfo(dtype).max
    if limit < torch.finfo(values.dtype).max:
        values = values.clamp(-limit, limit)
    return values.to(dtype)


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Raise :class:`NonFiniteError` saying how many NaN/Inf values ``x`` holds and where the first one is."""
    # One reduction without a temporary answers the common case: a finite sum means every value is finite.
    # A non-finite sum (NaN/Inf, or finite values that overflow) falls through to the exact element check.
    if bool(torch.isfinite(x.sum(dtype=torch.float32))):
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    raise NonFiniteError(
        f"{name} (shape {tuple(x.shape)}) holds {n_nan} NaN and {n_inf} Inf values; the first is at index {first}. "
        "Find where they come from (a diverged training run, a bad checkpoint) or replace them with "
        "torch.nan_to_num before quantizing."
    )


def check_bits(bits: int, low: int = 1, high: int = 16, what: str = "bit width") -> int:
    """Return ``bits`` if ``low <= bits <= high``; raise :class:`BitWidthError` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise BitWidthError(f"{what} {bits!r} is out of range; use a whole number from {low} to {high}.")
    return bits


def _as_int(value: object) -> object:
    # Accept numpy and torch integer scalars as well as Python ints (anything with __index__), but not bools.
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return value


def check_group_size(group_size: int) -> int:
    """Return ``group_size`` if it is a positive integer; raise :class:`GroupSizeError` otherwise."""
    group_size = _as_int(group_size)  # type: ignore[assignment]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise GroupSizeError(
            f"group size {group_size!r} is invalid; use a positive whole number such as 32, 64 or 128 "
            "(a group larger than the axis simply covers the whole row)."
        )
    return group_size


def normalize_axis(axis: int, ndim: int) -> int:
    """Turn a possibly negative ``axis`` into an index in ``range(ndim)``; raise :class:`AxisError` if invalid."""
    axis = _as_int(axis)  # type: ignore[assignment]
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise AxisError(
            f"axis {axis!r} is out of range for a tensor with {ndim} dimension(s); "
            f"use a value from {-ndim} to {ndim - 1}."
        )
    return axis % ndim
