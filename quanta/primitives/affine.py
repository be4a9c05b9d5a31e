"""Uniform (affine) quantization: scale and zero point from a range, integer codes, dequantization, STE.

Conventions follow torch's own quantize ops so that codes match them bit for bit:

* ``q = clamp(round_half_even(x * (1 / scale)) + zero, qmin, qmax)`` computed in fp32;
* ``x_hat = (q - zero) * scale``.

Symmetric scales never clip: ``scale = max(min(x, 0) / qmin, max(x, 0) / qmax)`` (torchao's
"symmetric, no clipping error"). With the narrow range ``[-127, 127]`` that is ``absmax / 127``; with the full
range ``[-128, 127]`` a group whose extreme is negative gets ``absmax / 128`` and uses the code -128, one whose
extreme is positive gets ``absmax / 127``. Either way the extreme value is reproduced exactly, so quantizing a
dequantized tensor gives back the same codes (with fp32 scales; fp16/bf16 steps are rounded up, see
:func:`storage_scale`). (torch's observers use ``absmax / 127.5`` instead, which clips the
positive extreme by half a step and is not idempotent.)
"""

from __future__ import annotations

import warnings

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
    "symmetric_zero",
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


def symmetric_zero(bits: int, signed: bool) -> int:
    """Zero point of a symmetric grid: 0 for signed codes, the midpoint ``2**(bits-1)`` for unsigned ones (torch's)."""
    return 0 if signed else 1 << (bits - 1)


def storage_param(value: torch.Tensor, dtype: torch.dtype, what: str = "parameter") -> torch.Tensor:
    """Cast a stored parameter (offset, codebook entry, level) to ``dtype``, saturating with a warning.

    A value beyond the dtype's largest finite value would otherwise become inf and poison every decoded value.
    """
    finfo = torch.finfo(dtype)
    v = value.float()
    if finfo.max < torch.finfo(torch.float32).max and bool((v.abs() > finfo.max).any()):
        warnings.warn(
            f"a {what} of magnitude {float(v.abs().max()):.3g} exceeds {dtype}'s largest value {finfo.max:.6g} and "
            "was saturated; store parameters as fp32 or bf16 (scheme option sf32 or sbf16) for data this large.",
            stacklevel=3,
        )
        v = v.clamp(-finfo.max, finfo.max)
    return v.to(dtype)


def storage_scale(scale: torch.Tensor, dtype: torch.dtype, keep_zero: bool = False) -> torch.Tensor:
    """Cast a step size to its storage dtype, rounding up, keeping it finite and (unless ``keep_zero``) non-zero.

    Rounding up matters for fp16/bf16: a step rounded down would clip the group's extreme values (by many steps
    at high bit widths). A zero range (a constant group) gives a zero step; it becomes 1.0 so codes are computed
    without dividing by zero. A step below the dtype's smallest positive value (or fp32's smallest normal number:
    ``1 / step`` must stay finite) is raised to it, so a group too small for the dtype collapses towards zero
    codes, with a warning; a step above the largest finite value saturates, also with a warning. Formats whose
    scale is a level rather than a step (binary, ternary) pass ``keep_zero=True`` and get the nearest value.
    """
    finfo = torch.finfo(dtype)
    if keep_zero:
        return storage_param(scale, dtype, "scale")
    want = scale.float()
    # 1 / step must stay finite in fp32, and the step must be representable (fp16 ends at 2**-24).
    tiny = max(finfo.tiny * finfo.eps, torch.finfo(torch.float32).tiny)
    if bool(((want > 0) & (want < tiny)).any()):
        warnings.warn(
            f"a quantization step of {float(want[want > 0].min()):.3g} is below the smallest usable step {tiny:.3g} "
            f"for {dtype} scales; those groups collapse towards zero. Use sf32 for data this small, or rescale it.",
            stacklevel=3,
        )
    want = torch.where(want > 0, want.clamp(min=tiny), want)
    s = storage_param(want, dtype, "quantization step")
    low = s.float() < want
    if bool(low.any()):
        higher = torch.nextafter(s, torch.full_like(s, float("inf")))
        s = torch.where(low & torch.isfinite(higher), higher, s)  # a saturated step stays at the largest value
    return torch.where(s > 0, s, torch.ones((), dtype=dtype, device=s.device))


def symmetric_scale(
    xmin: torch.Tensor, xmax: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Smallest scale that represents ``[xmin, xmax]`` on codes ``[qmin, qmax]`` around a zero point of 0.

    ``qmin < 0 <= qmax`` are the codes relative to the zero point. The result is in ``dtype``.

    Example:
        >>> symmetric_scale(torch.tensor(-2.0), torch.tensor(1.0), -8, 7)  # -2 -> code -8 exactly
        tensor(0.2500)
    """
    neg = torch.clamp(xmin.float(), max=0) / qmin
    pos = torch.clamp(xmax.float(), min=0) / qmax if qmax > 0 else torch.zeros_like(neg)
    return storage_scale(torch.maximum(neg, pos), dtype)


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
    offset = storage_param(xmin, dtype, "float offset")
    # Rounded up past the minimum: step down one ulp to keep it covered (unless that leaves the finite range).
    lower = torch.nextafter(offset, torch.full_like(offset, float("-inf")))
    offset = torch.where((offset.float() > xmin.float()) & torch.isfinite(lower), lower, offset)
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
    q = x.float() * inv  # a fresh tensor: the steps below work in place on it
    q = round_values(q, rounding, generator) if rounding == "sr" else q.round_()
    if not (isinstance(zero, int) and zero == 0):
        q += zero
    return q.clamp_(qmin, qmax).to(torch.int32)


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | int = 0) -> torch.Tensor:
    """``(codes - zero) * scale`` in fp32."""
    values = codes.float()
    if not (isinstance(zero, int) and zero == 0):
        values -= zero
    return values.mul_(scale.float())
