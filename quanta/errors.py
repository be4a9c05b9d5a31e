"""Exceptions raised by quanta.

Every error is a subclass of :class:`QuantaError`, and every message names the offending value and says
what to do about it. Most also subclass the matching builtin (``ValueError``, ``IndexError``) so code that
already catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "AxisError",
    "BitWidthError",
    "BudgetError",
    "CorruptDataError",
    "GroupSizeError",
    "InvalidTensorError",
    "NonFiniteError",
    "NotFittedError",
    "QuantaError",
    "SchemeError",
    "UnknownFormatError",
    "UnsupportedError",
]


class QuantaError(Exception):
    """Base class of every error quanta raises on purpose."""


class SchemeError(QuantaError, ValueError):
    """A quantization scheme string or combination of settings is invalid."""


class UnknownFormatError(SchemeError):
    """A format name is not in the registry."""


class BitWidthError(SchemeError):
    """A bit width is outside the range a format supports."""


class GroupSizeError(SchemeError):
    """A group size is zero, negative or otherwise unusable."""


class UnsupportedError(SchemeError):
    """A valid setting that the chosen format or operation does not support."""


class InvalidTensorError(QuantaError, ValueError):
    """A tensor cannot be quantized as given (empty, not floating point, wrong shape)."""


class NonFiniteError(InvalidTensorError):
    """A tensor holds NaN or Inf values."""


class AxisError(QuantaError, IndexError):
    """An axis is out of range for the tensor it refers to."""


class CorruptDataError(QuantaError, ValueError):
    """Stored quantized data (a dict of tensors or a file) is incomplete, inconsistent or damaged."""


class NotFittedError(QuantaError, ValueError, AttributeError):
    """A quantizer or index was used before ``fit`` (scikit-learn's name, so code that catches that keeps working)."""


class BudgetError(QuantaError, ValueError):
    """A size budget (bytes or bits per weight) that no choice of the candidates can meet."""
