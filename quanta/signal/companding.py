"""Companding: continuous mu-law / A-law curves and the 8-bit ITU-T G.711 codecs on int16 PCM.

The continuous laws map ``[-1, 1]`` onto itself (``mu = 255``, ``A = 87.6``, the G.711 constants). The codecs
follow the ITU-T G.191 reference algorithm (``g711.c``) bit for bit, vectorised over numpy arrays:

- A-law uses the 13 most significant bits: negative samples take the one's complement (``~x >> 4``), so
  ``-1 .. -16`` land in the same cell as ``0 .. 15``; a 3-bit segment and 4-bit mantissa follow, the sign bit
  is set for ``x >= 0``, and the even bits are inverted (``^ 0x55``). Decoding returns the cell's midpoint.
- mu-law uses 14 bits: ``|x| -> (x >> 2) + 33`` (one's complement ``~x >> 2`` for negatives; 33 is the bias
  ``0x84 / 4``), clipped at ``0x1FFF``; the segment is the position of the leading one, and the whole code
  is complemented (``0xFF`` and ``0x7F`` are positive and negative zero, both decoding to 0).

The one's complement makes negative samples that fall exactly halfway between two decoded levels go to the
level nearer zero. Python's ``audioop`` (the Sun reference code) negates instead, sending those 508 mu-law
samples to the level farther from zero; its A-law codec agrees with G.191 everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from quanta.errors import InvalidTensorError
from quanta.signal._arrays import Array, back, to_float64

__all__ = [
    "A_LAW",
    "MU_LAW",
    "alaw_compress",
    "alaw_decode",
    "alaw_encode",
    "alaw_expand",
    "mulaw_compress",
    "mulaw_decode",
    "mulaw_encode",
    "mulaw_expand",
]

MU_LAW = 255.0
A_LAW = 87.6


def mulaw_compress(x: Array, mu: float = MU_LAW) -> Array:
    """``sign(x) ln(1 + mu |x|) / ln(1 + mu)`` for ``x`` in ``[-1, 1]`` (values beyond are clipped).

    Example:
        >>> float(mulaw_compress(np.array([1.0]))[0])
        1.0
    """
    arr, as_torch = to_float64(x)
    a = np.clip(arr, -1.0, 1.0)
    return back(np.sign(a) * np.log1p(mu * np.abs(a)) / math.log1p(mu), as_torch)


def mulaw_expand(y: Array, mu: float = MU_LAW) -> Array:
    """Inverse of :func:`mulaw_compress`: ``sign(y) ((1 + mu)^|y| - 1) / mu``.

    Example:
        >>> round(float(mulaw_expand(mulaw_compress(np.array([0.3])))[0]), 12)
        0.3
    """
    arr, as_torch = to_float64(y, "y")
    a = np.clip(arr, -1.0, 1.0)
    return back(np.sign(a) * np.expm1(np.abs(a) * math.log1p(mu)) / mu, as_torch)


def alaw_compress(x: Array, a_law: float = A_LAW) -> Array:
    """A-law: ``A|x| / (1 + ln A)`` below ``|x| = 1/A``, ``(1 + ln(A|x|)) / (1 + ln A)`` above, with the sign of x.

    Example:
        >>> float(alaw_compress(np.array([-1.0]))[0])
        -1.0
    """
    arr, as_torch = to_float64(x)
    m = np.abs(np.clip(arr, -1.0, 1.0))
    denom = 1.0 + math.log(a_law)
    small = m < 1.0 / a_law
    y = np.where(small, a_law * m / denom, (1.0 + np.log(np.maximum(a_law * m, 1.0))) / denom)
    return back(np.sign(arr) * y, as_torch)


def alaw_expand(y: Array, a_law: float = A_LAW) -> Array:
    """Inverse of :func:`alaw_compress`.

    Example:
        >>> round(float(alaw_expand(alaw_compress(np.array([0.005])))[0]), 12)
        0.005
    """
    arr, as_torch = to_float64(y, "y")
    m = np.abs(np.clip(arr, -1.0, 1.0))
    denom = 1.0 + math.log(a_law)
    x = np.where(m < 1.0 / denom, m * denom / a_law, np.exp(m * denom - 1.0) / a_law)
    return back(np.sign(arr) * x, as_torch)


def _pcm(x: Any) -> tuple[np.ndarray, bool]:
    """int16 PCM as int32 numpy (room for the arithmetic), and whether it came as a torch tensor."""
    is_torch = isinstance(x, torch.Tensor)
    arr = x.detach().cpu().numpy() if is_torch else np.asarray(x)
    if arr.dtype != np.int16:
        raise InvalidTensorError(
            f"G.711 encoders take int16 PCM, got dtype {arr.dtype}; convert floats in [-1, 1) with "
            "np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)"
        )
    return arr.astype(np.int32), is_torch


def _codes(c: Any) -> tuple[np.ndarray, bool]:
    is_torch = isinstance(c, torch.Tensor)
    arr = c.detach().cpu().numpy() if is_torch else np.asarray(c)
    if arr.dtype != np.uint8:
        raise InvalidTensorError(
            f"G.711 decoders take uint8 codes, got dtype {arr.dtype}; pass the output of the encoder "
            "or np.asarray(codes, dtype=np.uint8)"
        )
    return arr.astype(np.int32), is_torch


def _out(arr: np.ndarray, dtype: type, as_torch: bool) -> Array:
    return back(arr.astype(dtype), as_torch)


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Number of significant bits of each non-negative int (0 for 0), exact for values below 2^24."""
    return np.where(v > 0, np.frexp(v.astype(np.float64))[1], 0).astype(np.int32)


def alaw_encode(pcm: Array) -> Array:
    """G.711 A-law encode int16 PCM to uint8 codes (G.191 ``alaw_compress``).

    Example:
        >>> alaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)).tolist()
        [213, 85, 170, 42]
    """
    x, as_torch = _pcm(pcm)
    ix = np.where(x < 0, ~x, x) >> 4  # 0..2047: one's complement for negatives
    # exponent 0 holds 0..15 (and 16..31 share exponent 1); above, the leading one's position sets it
    iexp = np.maximum(_bit_length(ix) - 4, 0)
    mant = np.where(iexp > 0, (ix >> np.maximum(iexp - 1, 0)) - 16, ix)
    code = (iexp << 4) + mant
    code = np.where(x >= 0, code | 0x80, code)
    return _out(code ^ 0x55, np.uint8, as_torch)


def alaw_decode(codes: Array) -> Array:
    """G.711 A-law decode uint8 codes to int16 PCM (G.191 ``alaw_expand``: cell midpoints).

    Example:
        >>> alaw_decode(np.array([213, 85, 170], dtype=np.uint8)).tolist()
        [8, -8, 32256]
    """
    c, as_torch = _codes(codes)
    ix = (c ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    mant = np.where(iexp > 0, mant + 16, mant)
    mant = (mant << 4) + 8
    mant = np.where(iexp > 1, mant << np.maximum(iexp - 1, 0), mant)
    return _out(np.where(c > 127, mant, -mant), np.int16, as_torch)


def mulaw_encode(pcm: Array) -> Array:
    """G.711 mu-law encode int16 PCM to uint8 codes (G.191 ``ulaw_compress``).

    Example:
        >>> mulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)).tolist()
        [255, 127, 128, 0]
    """
    x, as_torch = _pcm(pcm)
    absno = np.minimum((np.where(x < 0, ~x, x) >> 2) + 33, 0x1FFF)  # 14-bit magnitude plus the bias 33
    segno = _bit_length(absno >> 6) + 1  # 1..8
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    return _out(np.where(x >= 0, code | 0x80, code), np.uint8, as_torch)


def mulaw_decode(codes: Array) -> Array:
    """G.711 mu-law decode uint8 codes to int16 PCM (G.191 ``ulaw_expand``).

    Example:
        >>> mulaw_decode(np.array([255, 127, 128, 0], dtype=np.uint8)).tolist()
        [0, 0, 32124, -32124]
    """
    c, as_torch = _codes(codes)
    sign = np.where(c < 0x80, -1, 1)
    inv = ~c
    exponent = (inv >> 4) & 0x07
    mantissa = inv & 0x0F
    step = 4 << (exponent + 1)
    mag = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return _out(sign * mag, np.int16, as_torch)
