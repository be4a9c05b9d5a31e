"""Sampling a continuous-time function, and band-limited resampling of a sampled signal.

:func:`resample` evaluates the ideal reconstruction ``x(t) = sum_k x[k] sinc(t - k)`` at the output instants,
with the sinc truncated to ``2 · half_width`` taps and tapered by a Kaiser window (``beta = 8.6``, about -90 dB
side lobes). When the rate goes down the sinc is widened by ``rate_in / rate_out`` so it also removes the
frequencies the new rate cannot hold (anti-aliasing). For a rational ratio ``L / M`` the output instants
repeat their fractional phase every ``L`` outputs, so the filter is a polyphase bank of ``L`` phases; the taps
are computed per phase and shared across all outputs of that phase.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from quanta.errors import InvalidTensorError, SchemeError
from quanta.signal._arrays import Array, back, check_positive, to_float64

__all__ = ["resample", "sample", "sample_times"]

KAISER_BETA = 8.6
"""Kaiser window shape: about -90 dB stop band, a transition of a few percent of Nyquist at 32 taps a side."""


def sample_times(rate: float, n: int, start: float = 0.0) -> np.ndarray:
    """The ``n`` instants ``start + k / rate`` (float64 seconds).

    Example:
        >>> sample_times(4, 3).tolist()
        [0.0, 0.25, 0.5]
    """
    rate = check_positive(rate, "rate")
    return float(start) + np.arange(int(n), dtype=np.float64) / rate


def sample(fn: Callable[[Any], Any], rate: float, duration: float, start: float = 0.0) -> np.ndarray:
    """Sample the continuous-time function ``fn(t)`` (t in seconds) at ``rate`` Hz for ``duration`` seconds.

    ``fn`` is first called once with the whole float64 array of instants (numpy ufunc style); if that fails
    or returns the wrong shape it is called once per instant.

    Args:
        fn: a callable of time, e.g. ``lambda t: np.sin(2 * np.pi * 440 * t)``.
        rate: samples per second, > 0.
        duration: seconds, > 0; ``round(duration * rate)`` samples are taken (at least one).
        start: the first instant.

    Returns:
        float64 numpy array of ``round(duration * rate)`` samples.

    Raises:
        SchemeError: ``rate`` or ``duration`` not > 0.
        NonFiniteError: ``fn`` returned NaN or Inf.

    Example:
        >>> sample(lambda t: 2 * t, rate=2, duration=2).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    rate = check_positive(rate, "rate")
    duration = check_positive(duration, "duration")
    n = max(1, round(duration * rate))
    t = sample_times(rate, n, start)
    try:
        values = np.asarray(fn(t), dtype=np.float64)
        if values.shape != t.shape:
            raise ValueError("not vectorised")
    except (TypeError, ValueError):
        values = np.array([float(fn(float(ti))) for ti in t], dtype=np.float64)
    arr, _ = to_float64(values, "fn(t)")
    return arr


def _ratio(rate_in: float, rate_out: float, max_phases: int) -> Fraction:
    """``rate_out / rate_in`` as a fraction with a denominator and numerator small enough for a phase table."""
    ratio = Fraction(rate_out) / Fraction(rate_in)
    if ratio.numerator > max_phases:
        ratio = ratio.limit_denominator(max_phases)
    return ratio


def resample(
    x: Array, rate_in: float, rate_out: float, axis: int = -1, half_width: int = 32, max_phases: int = 4096
) -> Array:
    """Resample ``x`` from ``rate_in`` to ``rate_out`` Hz with a Kaiser-windowed sinc (polyphase) filter.

    Output sample ``n`` lies at ``n · rate_in / rate_out`` input samples; samples beyond the ends count as 0.

    Args:
        x: signal, numpy array or torch tensor; resampled along ``axis``.
        rate_in: its sample rate, > 0.
        rate_out: the wanted rate, > 0.
        axis: the time axis.
        half_width: taps on each side of the output instant, at the lower of the two rates.
        max_phases: a ratio whose reduced numerator exceeds this is approximated (the timing error is below
            ``1 / max_phases`` of an output period per output sample's phase, not cumulative).

    Returns:
        ``ceil(len · rate_out / rate_in)`` samples along ``axis``, float64, numpy or torch like ``x``.

    Raises:
        SchemeError: a rate not > 0 or ``half_width < 1``.
        NonFiniteError: NaN or Inf samples.

    Example:
        >>> y = resample(np.ones(100), 8000, 16000)
        >>> y.shape, round(float(y[100]), 6)
        ((200,), 1.0)
    """
    rate_in = check_positive(rate_in, "rate_in")
    rate_out = check_positive(rate_out, "rate_out")
    if half_width < 1:
        raise SchemeError(f"half_width must be >= 1, got {half_width}; 32 gives about -90 dB stop band")
    arr, as_torch = to_float64(x)
    try:
        moved = np.moveaxis(arr, axis, -1)
    except (ValueError, IndexError) as exc:  # numpy AxisError subclasses both
        raise InvalidTensorError(f"axis {axis} is out of range for x of shape {arr.shape}") from exc
    ratio = _ratio(rate_in, rate_out, max_phases)
    up, down = ratio.numerator, ratio.denominator  # output n sits at n * down / up input samples
    n_in = moved.shape[-1]
    n_out = math.ceil(n_in * up / down)
    cutoff = min(1.0, up / down)  # of the input's Nyquist frequency
    taps = math.ceil(half_width / cutoff)
    offsets = np.arange(-taps + 1, taps + 1)  # (2 taps,) relative to floor(t)
    phases = np.arange(up)
    base, frac = np.divmod(phases * down, up)  # output n = q * up + p sits at q * down + base[p] + frac[p]/up
    tau = frac[:, None] / up - offsets[None, :]  # (up, 2 taps) distance from each tap to the instant
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (tau / (taps + 1)) ** 2, 0.0, None))) / np.i0(KAISER_BETA)
    bank = cutoff * np.sinc(cutoff * tau) * window  # (up, 2 taps)
    flat = moved.reshape(-1, n_in)
    padded = np.pad(flat, ((0, 0), (taps, taps + down + 1)))
    out = np.empty((flat.shape[0], n_out), dtype=np.float64)
    for p in range(min(up, n_out)):
        n = np.arange(p, n_out, up)  # outputs of this phase
        start = (n // up) * down + base[p]  # floor of their instants
        idx = start[:, None] + offsets[None, :] + taps  # (len(n), 2 taps) into padded
        out[:, n] = np.einsum("rnk,k->rn", padded[:, idx], bank[p])
    result = np.moveaxis(out.reshape(*moved.shape[:-1], n_out), -1, axis)
    return back(result, as_torch)
