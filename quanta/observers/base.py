"""Range observers for activations: ``update`` on calibration batches, then ``qparams`` for a scheme.

scikit-learn conventions: ``__init__`` stores settings only, ``fit(x)`` / ``update(x)`` return ``self``, learned
state ends in ``_`` (``min_``, ``max_``). Observers see per-tensor ranges (static activation quantization).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.base import SCALE_DTYPES
from quanta.primitives.affine import affine_qparams, int_range, symmetric_scale, symmetric_zero
from quanta.primitives.checks import check_float_tensor
from quanta.scheme import QScheme

__all__ = ["Observer", "get_observer", "observer_names", "register_observer"]

_OBSERVERS: dict[str, type[Observer]] = {}


class Observer(ABC):
    """Tracks the range of the values it sees; subclasses decide which range to report."""

    name: ClassVar[str]
    combinable: ClassVar[bool] = False
    """Whether :meth:`combine_ranks` merges the ranks' observations into what one process would have seen."""

    def combine_ranks(self) -> None:
        """Merge this observer's state with the other ranks' (inside :func:`quanta.distributed.across`)."""
        raise QuantaError(f"the {self.name} observer cannot be combined across processes.")

    def reset(self) -> Observer:
        """Forget everything seen so far."""
        for key in [k for k in vars(self) if k.endswith("_")]:
            delattr(self, key)
        return self

    def fit(self, x: torch.Tensor) -> Observer:
        """``reset()`` then ``update(x)``."""
        return self.reset().update(x)

    def update(self, x: torch.Tensor) -> Observer:
        """Account for one batch of values (any shape)."""
        check_float_tensor(x, "observed activations")
        self._update(x.detach().float().reshape(-1))
        return self

    @abstractmethod
    def _update(self, x: torch.Tensor) -> None: ...

    @abstractmethod
    def range(self) -> tuple[float, float]:
        """The ``(lo, hi)`` range to quantize over."""

    def _seen(self) -> None:
        if not hasattr(self, "min_"):
            raise QuantaError(f"the {self.name} observer has seen no data; call update() with calibration batches.")

    def qparams(self, scheme: QScheme | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor ``(scale, zero_point)`` for an integer ``scheme`` from the observed range.

        Raises:
            UnsupportedError: the scheme's format is not an integer grid.
        """
        scheme = QScheme.parse(scheme)
        fmt = scheme.fmt
        if not scheme.is_integer:
            raise UnsupportedError(f"observers give integer scales and zero points; {scheme.format} is not an integer.")
        lo, hi = self.range()
        lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
        qmin, qmax = int_range(fmt.bits, fmt.signed_codes, scheme.narrow)
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        if scheme.mode == "asym":
            return affine_qparams(lo_t, hi_t, qmin, qmax, dtype)
        z0 = symmetric_zero(fmt.bits, fmt.signed_codes)
        return symmetric_scale(lo_t, hi_t, qmin - z0, qmax - z0, dtype), torch.tensor(z0, dtype=torch.int32)

    def format_params(self, scheme: QScheme | str) -> dict[str, torch.Tensor]:
        """Per-tensor parameters of any format (fp8 scale, binary scale, ...) fitted to what was observed.

        The format is fitted to the observed values clipped to :meth:`range` when the observer keeps a sample
        (percentile, mse, kl), else to the two range ends (enough for absmax-scaled and integer grids).
        Returns tensors shaped ``(1, 1, *trailing)`` in the scheme's storage dtypes.
        """
        scheme = QScheme.parse(scheme)
        lo, hi = self.range()
        sample = getattr(self, "sample_", None)
        values = torch.tensor([lo, hi]) if sample is None else sample.float().clamp(lo, hi)
        return scheme.fmt.fit(values.reshape(1, 1, -1), scheme, None)


def register_observer(cls: type[Any]) -> type[Any]:
    _OBSERVERS[cls.name] = cls
    return cls


def observer_names() -> list[str]:
    import quanta.observers  # noqa: F401

    return sorted(_OBSERVERS)


def get_observer(name: str, **settings: Any) -> Observer:
    """A new observer by name (``minmax``, ``ema``, ``percentile``, ``mse``, ``kl``)."""
    import quanta.observers  # noqa: F401

    if name not in _OBSERVERS:
        raise QuantaError(f"unknown observer {name!r}; available: {', '.join(sorted(_OBSERVERS))}.")
    factory: Callable[..., Observer] = _OBSERVERS[name]
    return factory(**settings)
