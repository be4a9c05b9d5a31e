"""Uniform (ADC-style) quantizers over a full-scale range, SQNR and its theory for a sine.

An ``N``-bit quantizer over ``[-A, A]`` has ``L = 2^N`` levels a step ``Δ = 2A / L`` apart:

- mid-rise (the default): levels at ``(k + 1/2) Δ``, ``k = -L/2 .. L/2 - 1``, no level at zero;
- mid-tread: levels at ``k Δ``, ``k = -L/2 .. L/2 - 1`` (two's complement), zero is a level.

A full-scale sine has power ``A² / 2``; with the error uniform over a step its power is ``Δ² / 12``, so
``SQNR = 10 log10(1.5 · 4^N) = 6.02 N + 1.76 dB``. At few bits a sine's error is not uniform (the sine lingers
near its peaks); :func:`sine_sqnr_exact` integrates the error against the sine's arcsine density exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from quanta.errors import BitWidthError, InvalidTensorError, SchemeError
from quanta.signal._arrays import Array, back, check_positive, to_float64

__all__ = ["MAX_BITS", "UniformResult", "check_bits", "quantize_uniform", "sine_sqnr_exact", "sqnr", "sqnr_theory"]

MAX_BITS = 24
"""Audio goes to 24 bits; every level of a 24-bit grid is exact in float64."""

Mode = Literal["midrise", "midtread"]


@dataclass(frozen=True)
class UniformResult:
    """What :func:`quantize_uniform` returns.

    Attributes:
        values: the quantized signal (reconstruction levels), same kind (numpy/torch) and shape as the input, float64.
        codes: integer level indices in ``0 .. 2^bits - 1``, int64, same kind and shape.
        step: the step ``Δ = 2 · full_scale / 2^bits``.
        clipped: how many samples lay beyond the quantizer's range (their error exceeds ``Δ / 2``).
        clipped_fraction: ``clipped`` over the number of samples.
    """

    values: Array
    codes: Array
    step: float
    clipped: int
    clipped_fraction: float


def check_bits(bits: int, low: int = 1, high: int = MAX_BITS) -> int:
    """``bits`` as an int in ``low..high``, else :class:`BitWidthError`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not low <= int(bits) <= high:
        raise BitWidthError(f"bits must be an integer in {low}..{high}, got {bits!r}; pick e.g. bits=8 or bits=16")
    return int(bits)


def _check_mode(mode: str) -> str:
    if mode not in ("midrise", "midtread"):
        raise SchemeError(f"mode must be 'midrise' or 'midtread', got {mode!r}")
    return mode


def _levels_codes(arr: np.ndarray, bits: int, full_scale: float, mode: str) -> tuple[np.ndarray, np.ndarray, float]:
    n_levels = 1 << bits
    step = 2.0 * full_scale / n_levels
    half = n_levels // 2
    if mode == "midrise":
        codes = np.clip(np.floor(arr / step) + half, 0, n_levels - 1)
        values = (codes - half + 0.5) * step
    else:
        codes = np.clip(np.floor(arr / step + 0.5) + half, 0, n_levels - 1)
        values = (codes - half) * step
    return values, codes.astype(np.int64), step


def quantize_uniform(x: Array, bits: int, full_scale: float = 1.0, mode: Mode = "midrise") -> UniformResult:
    """Quantize ``x`` with an ``bits``-bit uniform quantizer over ``[-full_scale, full_scale]``.

    Args:
        x: samples, numpy array or torch tensor of any shape (computed in float64).
        bits: 1..24.
        full_scale: the amplitude that maps to the ends of the range (``A``).
        mode: ``"midrise"`` (levels at odd multiples of ``Δ/2``) or ``"midtread"`` (zero is a level).

    Returns:
        A :class:`UniformResult` with the quantized values, codes, step and the clipped count and fraction.

    Raises:
        BitWidthError: ``bits`` outside 1..24.
        NonFiniteError: NaN or Inf samples.
        SchemeError: ``full_scale <= 0`` or an unknown ``mode``.

    Example:
        >>> r = quantize_uniform(np.array([0.1, -0.6, 2.0]), bits=2)
        >>> r.values.tolist(), r.clipped
        ([0.25, -0.75, 0.75], 1)
    """
    bits = check_bits(bits)
    full_scale = check_positive(full_scale, "full_scale")
    mode = _check_mode(mode)  # type: ignore[assignment]
    arr, as_torch = to_float64(x)
    values, codes, step = _levels_codes(arr, bits, full_scale, mode)
    clipped = int(np.count_nonzero(np.abs(values - arr) > step / 2))
    return UniformResult(back(values, as_torch), back(codes, as_torch), step, clipped, clipped / arr.size)


def sqnr(x: Array, xq: Array) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x² / sum (x - xq)²)`` in dB (``inf`` when exact).

    Example:
        >>> round(sqnr(np.array([1.0, -1.0]), np.array([0.9, -0.9])), 2)
        20.0
    """
    a, _ = to_float64(x, "x")
    b, _ = to_float64(xq, "xq")
    if a.shape != b.shape:
        raise InvalidTensorError(f"x has shape {a.shape} but xq has shape {b.shape}; pass the same samples twice")
    noise = float(np.sum((a - b) ** 2))
    signal = float(np.sum(a * a))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_theory(bits: int) -> float:
    """``10 log10(1.5 · 4^bits)`` ≈ ``6.02 · bits + 1.76`` dB: a full-scale sine with error uniform over a step.

    Example:
        >>> round(sqnr_theory(16), 2)
        98.09
    """
    bits = check_bits(bits)
    return 10.0 * math.log10(1.5) + 20.0 * bits * math.log10(2.0)


def _arcsine_moments(t: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``∫_{-A}^{t} x^k p(x) dx`` for ``k = 0, 1, 2`` under the arcsine density ``1 / (π sqrt(A² - x²))``."""
    t = np.clip(t, -amplitude, amplitude)
    theta = np.arcsin(t / amplitude)
    root = np.sqrt(np.maximum(amplitude * amplitude - t * t, 0.0))
    m0 = 0.5 + theta / math.pi
    m1 = -root / math.pi
    m2 = (amplitude * amplitude / 2 * (theta + math.pi / 2) - t * root / 2) / math.pi
    return m0, m1, m2


def sine_sqnr_exact(bits: int, amplitude: float = 1.0, full_scale: float = 1.0, mode: Mode = "midrise") -> float:
    """The SQNR (dB) of a sine of ``amplitude`` whose phase is uniform, computed in closed form.

    The error power is ``sum_k ∫_cell_k (x - level_k)² p(x) dx`` with ``p`` the arcsine density of the sine's
    samples; each cell's integral comes from the closed-form moments of ``p`` (no sampling), so a measured
    SQNR can be checked against it at any bit width. For a long sine at a frequency non-commensurate with
    the sample rate the phases are equidistributed, and the measured SQNR converges to this value.

    Example:
        >>> round(sine_sqnr_exact(8) - sqnr_theory(8), 3)
        -0.139
    """
    bits = check_bits(bits)
    amplitude = check_positive(amplitude, "amplitude")
    full_scale = check_positive(full_scale, "full_scale")
    mode = _check_mode(mode)  # type: ignore[assignment]
    n_levels = 1 << bits
    step = 2.0 * full_scale / n_levels
    k = np.arange(n_levels, dtype=np.float64) - n_levels // 2
    levels = (k + 0.5) * step if mode == "midrise" else k * step
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    m0, m1, m2 = _arcsine_moments(edges, amplitude)
    d0, d1, d2 = np.diff(m0), np.diff(m1), np.diff(m2)
    noise = float(np.sum(d2 - 2 * levels * d1 + levels * levels * d0))
    return 10.0 * math.log10((amplitude * amplitude / 2) / noise)
