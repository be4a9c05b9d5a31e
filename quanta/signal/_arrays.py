"""Array plumbing shared by quanta.signal: numpy or torch in, the same kind out, float64 math in between."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

from quanta.errors import InvalidTensorError, NonFiniteError, SchemeError

Array = Union[np.ndarray, torch.Tensor]  # noqa: UP007 - a runtime alias, Python 3.10 syntax
"""What quanta.signal accepts and returns: a numpy array or a torch tensor (the output matches the input)."""


def to_float64(x: Any, name: str = "x") -> tuple[np.ndarray, bool]:
    """``x`` as a finite, non-empty float64 numpy array, and whether it was a torch tensor."""
    is_torch = isinstance(x, torch.Tensor)
    try:
        arr = x.detach().cpu().double().numpy() if is_torch else np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidTensorError(
            f"{name} must be a numpy array or torch tensor of real numbers, got {type(x).__name__}; "
            "convert it with np.asarray(...) first"
        ) from exc
    if arr.size == 0:
        raise InvalidTensorError(f"{name} is empty (shape {arr.shape}); pass at least one sample")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise NonFiniteError(
            f"{name} holds {int(bad.sum())} NaN/Inf samples (first at flat index {first}); "
            "remove or interpolate them (e.g. np.nan_to_num) before quantizing"
        )
    return arr, is_torch


def back(arr: np.ndarray, as_torch: bool) -> Array:
    """Return ``arr`` as a torch tensor when the input was one, else as the numpy array itself."""
    return torch.from_numpy(np.ascontiguousarray(arr)) if as_torch else arr


def check_positive(value: float, name: str) -> float:
    """A finite, strictly positive real number (sample rates, durations, full scales)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SchemeError(f"{name} must be a positive number, got {value!r}") from exc
    if not np.isfinite(v) or v <= 0:
        raise SchemeError(
            f"{name} must be a finite number > 0, got {value!r}; pass a positive value (rates in Hz, e.g. 8000)"
        )
    return v
