"""Uniform (affine) quantization: scale and zero point from a range, integer codes, dequantization, STE.

Conventions follow torch's own quantize ops so that codes match them bit for bit:

* ``q = clamp(round_half_even(x * (1 / scale)) + zero, qmin, qmax)`` computed in fp32;
* ``x_hat = (q - zero) * scale``.

Symmetric scales use torch's formula ``scale = absmax / ((qmax - qmin) / 2)``: with the full int8 range
``[-128, 127]`` that is ``absmax / 127.5``, with the narrow range ``[-127, 127]`` it is ``absmax / 127``.
"""

from __future__ import annotations

import torch

from quanta.errors import BitWidthError
from quanta.primitives.checks import check_bits
from quanta.primitives.rounding import round_values

__all__ = [
    "affine_qparams",
    "dequantize_affine",
    "float_offset_qparams",
    "int_range",
    "quantize_affine",
    "storage_scale",
    "symmetric_scale",
]


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Return ``(qmin, qmax)`` of a ``bits``-wide integer.

    Narrow range drops the most negative code of a signed type so the grid is symmetric (``[-127, 127]``) and
    the lowest code of an unsigned type (``[1, 255]``).

    Example:
        >>> int_range(4, signed=True), int_range(8, signed=False, narrow=True)
        ((-8, 7), (1, 255))
    """
    check_bits(bits)
    if signed:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        qmin, qmax = 0, (1 << bits) - 1
    if narrow:
        qmin += 1
    if qmax <= qmin:
        raise BitWidthError(
            f"a {bits}-bit {'signed' if signed else 'unsigned'} narrow range has a single level; "
            "use the full range or more bits."
        )
    return qmin, qmax


def storage_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a scale to its storage dtype, keeping it finite and non-zero.

    A zero range (a constant group) gives a zero scale; it becomes 1.0 so codes are computed without dividing by
    zero (and a range too small for the dtype collapses to zero codes instead of NaN). Scales above the dtype's
    largest finite value saturate.
    """
    finfo = torch.finfo(dtype)
    s = scale.clamp(max=finfo.max).to(dtype)
    return torch.where(s > 0, s, torch.ones((), dtype=dtype, device=s.device))


def symmetric_scale(absmax: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale that maps ``[-absmax, absmax]`` onto ``[qmin, qmax]`` with a zero point of 0, in ``dtype``."""
    return storage_scale(absmax.float() / ((qmax - qmin) / 2), dtype)


def affine_qparams(
    xmin: torch.Tensor, xmax: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point mapping ``[xmin, xmax]`` onto ``[qmin, qmax]``.

    The range is widened to include 0 so that 0.0 is represented exactly (the zero point is an integer code).

    Returns:
        ``(scale, zero)``: ``scale`` in ``dtype``, ``zero`` as int32 in ``[qmin, qmax]``.
    """
    lo = torch.minimum(xmin.float(), torch.zeros_like(xmin, dtype=torch.float32))
    hi = torch.maximum(xmax.float(), torch.zeros_like(xmax, dtype=torch.float32))
    scale = storage_scale((hi - lo) / (qmax - qmin), dtype)
    zero = (qmin - torch.round(lo / scale.float())).clamp(qmin, qmax).to(torch.int32)
    return scale, zero


def float_offset_qparams(
    xmin: torch.Tensor, xmax: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and float offset (the group minimum) for ``x_hat = (q - qmin) * scale + offset``.

    This is the HQQ / GGUF Q4_1 convention: the range is not widened to include 0, so every level lands inside
    the data, at the price of 0.0 not being exact.

    Returns:
        ``(scale, offset)``, both in ``dtype``.
    """
    offset = xmin.float().to(dtype)
    scale = storage_scale((xmax.float() - offset.float()) / (qmax - qmin), dtype)
    return scale, offset


def quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | int,
    qmin: int,
    qmax: int,
    rounding: str = "rne",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer codes ``clamp(round(x * (1 / scale)) + zero, qmin, qmax)`` as int32 (``scale``/``zero`` broadcast)."""
    inv = 1.0 / scale.float()
    q = round_values(x.float() * inv, rounding, generator) + zero
    return q.clamp(qmin, qmax).to(torch.int32)


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | int = 0) -> torch.Tensor:
    """``(codes - zero) * scale`` in fp32."""
    return (codes - zero).float() * scale.float()
