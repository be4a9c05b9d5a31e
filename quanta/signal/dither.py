"""Dither and noise shaping: requantize a signal with RPDF/TPDF dither and an error-feedback noise shaper.

Non-subtractive dither adds noise ``d`` before the quantizer. Rectangular (RPDF, width one step ``Δ``) makes
the error's mean independent of the signal; triangular (TPDF, the sum of two RPDFs, width ``2Δ``) also makes
its power independent of the signal, so harmonic distortion of a low-level sine turns into a steady hiss
(total error power ``Δ²/12 + Δ²/6 = Δ²/4``).

Error feedback: with ``e[n] = y[n] - v[n]`` the quantizer's error (dither included) and
``v[n] = x[n] + sum_k c_k e[n-k]``, the output is ``y = x + e * (1, c_1, c_2, ...)``: the error is filtered by
the noise-transfer function ``NTF(z) = 1 + sum_k c_k z^-k``. Shapers (``c`` coefficients):

- ``"1"``: ``(1 - z^-1)``, ``c = (-1,)``: first-order high-pass, +6 dB/octave.
- ``"2"``: ``(1 - z^-1)^2``, ``c = (-2, 1)``: second order, +12 dB/octave.
- ``"f9"``: Wannamaker's 9-tap F-weighted filter for 44.1 kHz (the "f-weighted" shaper of SoX): noise
  lowered where hearing is most sensitive (about 1-6 kHz at 44.1 kHz) and pushed towards 15-22 kHz.

Any other FIR NTF can be passed as a sequence of ``c`` coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

from quanta.errors import SchemeError
from quanta.signal._arrays import Array, back, check_positive, to_float64
from quanta.signal.uniform import UniformResult, check_bits

__all__ = [
    "NOISE_SHAPERS",
    "TonePowers",
    "band_power",
    "dither_noise",
    "ntf_band_gain",
    "requantize",
    "shaper_coefficients",
    "tone_powers",
]

NOISE_SHAPERS: dict[str, tuple[float, ...]] = {
    "none": (),
    "1": (-1.0,),
    "2": (-2.0, 1.0),
    "f9": (-2.412, 3.370, -3.937, 4.174, -3.353, 2.205, -1.281, 0.569, -0.0847),
}
"""Noise-transfer functions ``NTF(z) = 1 + sum_k c[k-1] z^-k`` by name."""

DitherKind = Literal["none", "rpdf", "tpdf"]
Shaper = Union[str, int, Sequence[float], None]  # noqa: UP007 - a runtime alias


def shaper_coefficients(shape: Shaper) -> tuple[float, ...]:
    """The ``c`` coefficients of a shaper given by name (``"1"``, ``"2"``, ``"f9"``, ``1``, ``2``), as a sequence,
    or ``None`` / ``"none"`` for no shaping.

    Example:
        >>> shaper_coefficients(2)
        (-2.0, 1.0)
    """
    if shape is None:
        return ()
    if isinstance(shape, bool):
        raise SchemeError(f"shape must be a shaper name, an order or coefficients, got {shape!r}")
    if isinstance(shape, (str, int)):
        key = str(shape)
        if key not in NOISE_SHAPERS:
            raise SchemeError(
                f"unknown noise shaper {shape!r}; pick one of {sorted(NOISE_SHAPERS)} or pass coefficients"
            )
        return NOISE_SHAPERS[key]
    coeffs = tuple(float(c) for c in shape)
    if not all(math.isfinite(c) for c in coeffs):
        raise SchemeError(f"noise-shaper coefficients must be finite, got {coeffs}")
    return coeffs


def dither_noise(shape: tuple[int, ...], step: float, kind: DitherKind = "tpdf", seed: int = 0) -> np.ndarray:
    """Dither samples: RPDF uniform on ``[-Δ/2, Δ/2)``, TPDF the sum of two (triangular on ``(-Δ, Δ)``).

    Example:
        >>> d = dither_noise((100000,), 1.0, "tpdf")
        >>> round(float(d.var()), 2)  # Δ² / 6
        0.17
    """
    if kind not in ("none", "rpdf", "tpdf"):
        raise SchemeError(f"dither must be 'none', 'rpdf' or 'tpdf', got {kind!r}")
    rng = np.random.default_rng(seed)
    if kind == "none":
        return np.zeros(shape)
    d = rng.random(shape) - 0.5
    if kind == "tpdf":
        d = d + (rng.random(shape) - 0.5)
    return d * step


def _shaped(
    x: np.ndarray, d: np.ndarray, step: float, lo: int, hi: int, c: tuple[float, ...]
) -> tuple[np.ndarray, int]:
    """Error-feedback loop along the last axis (sequential in time, looped over the other axes).

    Returns the signed codes and how many samples the quantizer had to clamp to an end of its range.
    """
    rows = x.reshape(-1, x.shape[-1])
    drows = d.reshape(-1, x.shape[-1])
    codes = np.empty(rows.shape, dtype=np.int64)
    order, clamped = len(c), 0
    for r in range(rows.shape[0]):
        hist = [0.0] * order  # e[n-1], e[n-2], ...
        out = [0] * rows.shape[1]
        for n, (xn, dn) in enumerate(zip(rows[r].tolist(), drows[r].tolist(), strict=True)):
            v = xn
            for k in range(order):
                v += c[k] * hist[k]
            raw = math.floor((v + dn) / step + 0.5)
            q = min(max(raw, lo), hi)
            clamped += q != raw
            out[n] = q
            hist = [q * step - v, *hist[:-1]]
        codes[r] = out
    return codes.reshape(x.shape), clamped


def requantize(
    x: Array,
    bits: int,
    full_scale: float = 1.0,
    dither: DitherKind = "tpdf",
    shape: Shaper = None,
    seed: int = 0,
) -> UniformResult:
    """Quantize ``x`` to ``bits`` on a mid-tread grid over ``[-full_scale, full_scale]`` with dither and shaping.

    Args:
        x: samples, numpy array or torch tensor; time runs along the last axis.
        bits: 1..24.
        full_scale: amplitude of the ends of the range.
        dither: ``"tpdf"`` (default), ``"rpdf"`` or ``"none"``.
        shape: noise shaper: ``None``, ``1``, ``2``, ``"f9"`` or NTF coefficients ``(c_1, c_2, ...)``.
        seed: seed of the dither generator.

    Returns:
        A :class:`~quanta.signal.uniform.UniformResult` (values, codes ``0..2^bits-1``, step, clipping).

    Raises:
        BitWidthError, NonFiniteError, SchemeError: bad ``bits``, samples, or settings.

    Example:
        >>> r = requantize(np.zeros(4), bits=8, dither="none")
        >>> r.values.tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    bits = check_bits(bits)
    full_scale = check_positive(full_scale, "full_scale")
    coeffs = shaper_coefficients(shape)
    arr, as_torch = to_float64(x)
    n_levels = 1 << bits
    step = 2.0 * full_scale / n_levels
    lo, hi = -(n_levels // 2), n_levels // 2 - 1
    d = dither_noise(arr.shape, step, dither, seed)
    if coeffs:
        signed, clipped = _shaped(arr, d, step, lo, hi, coeffs)
    else:
        raw = np.floor((arr + d) / step + 0.5)
        clipped = int(np.count_nonzero((raw < lo) | (raw > hi)))
        signed = np.clip(raw, lo, hi).astype(np.int64)
    values = signed * step
    codes = signed - lo
    return UniformResult(back(values, as_torch), back(codes, as_torch), step, clipped, clipped / arr.size)


def ntf_band_gain(coeffs: Sequence[float], lo: float, hi: float, rate: float) -> float:
    """``(2 / rate) ∫_lo^hi |NTF(f)|² df``: the share of white error power the NTF puts in ``[lo, hi]`` Hz.

    ``|NTF|² = r_0 + 2 sum_k r_k cos(k ω)`` with ``r`` the autocorrelation of ``(1, c_1, ...)``, so the band
    integral is closed-form. A flat NTF gives ``2 (hi - lo) / rate``; the full band gives ``sum c² + 1``.

    Example:
        >>> round(ntf_band_gain((), 0, 4000, 8000), 6)
        1.0
    """
    rate = check_positive(rate, "rate")
    h = np.concatenate([[1.0], np.asarray(coeffs, dtype=np.float64)])
    r = np.correlate(h, h, mode="full")[len(h) - 1 :]  # r_0, r_1, ...
    a, b = 2 * math.pi * lo / rate, 2 * math.pi * hi / rate
    total = r[0] * (b - a)
    for k in range(1, len(r)):
        total += 2 * r[k] * (math.sin(k * b) - math.sin(k * a)) / k
    return float(total / math.pi)


def band_power(e: Array, rate: float, lo: float, hi: float) -> float:
    """Mean-square power of ``e`` (last axis = time) in the band ``[lo, hi)`` Hz, from its FFT (Parseval).

    The band powers of disjoint bands covering ``[0, rate/2]`` add up to ``mean(e²)``.

    Example:
        >>> round(band_power(np.ones(8), 8.0, 0, 4.0), 6)
        1.0
    """
    arr, _ = to_float64(e, "e")
    rate = check_positive(rate, "rate")
    n = arr.shape[-1]
    spec = np.abs(np.fft.rfft(arr, axis=-1)) ** 2 / (n * n)
    weight = np.full(spec.shape[-1], 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    f = np.fft.rfftfreq(n, 1.0 / rate)
    mask = (f >= lo) & (f < hi) if hi < rate / 2 else (f >= lo)
    return float(np.mean(np.sum(spec[..., mask] * weight[mask], axis=-1)))


@dataclass(frozen=True)
class TonePowers:
    """What :func:`tone_powers` measures, all per FFT bin of one realization.

    Attributes:
        floor: the noise floor: mean power of the bins that hold neither DC, the tone nor its harmonics
            (of the individual realizations, so it counts all the noise).
        fundamental: power of the tone's bin in the averaged spectrum.
        harmonics: ``{h: power}`` for h = 2, 3, ... in the averaged spectrum: the part of the output that
            repeats identically in every realization (noise averages out across realizations).
    """

    floor: float
    fundamental: float
    harmonics: dict[int, float]

    def harmonic_db(self, h: int) -> float:
        """Harmonic ``h`` relative to the noise floor, dB (negative: below the floor)."""
        p = self.harmonics[h]
        return -math.inf if p == 0 else 10 * math.log10(p / self.floor)


def tone_powers(y: Array, tone_bin: int, n_harmonics: int = 5) -> TonePowers:
    """Spectral powers of a coherently sampled tone (exactly ``tone_bin`` cycles per record).

    ``y`` is ``(n,)`` or ``(realizations, n)``: the same tone quantized with independent dither. The complex
    spectra are averaged across realizations, so a distortion product (deterministic in the signal) keeps
    its power while dither noise drops by the number of realizations; the floor is each realization's own
    mean noise power per bin. A harmonic "below the noise floor" has ``harmonic_db(h) < 0``.

    Example:
        >>> t = np.arange(64)
        >>> p = tone_powers(np.sin(2 * np.pi * 4 * t / 64) + 0.01 * np.cos(2 * np.pi * 12 * t / 64) + 1e-3, 4)
        >>> round(10 * math.log10(p.harmonics[3] / p.fundamental), 1)
        -40.0
    """
    arr, _ = to_float64(y, "y")
    rows = arr.reshape(-1, arr.shape[-1])
    n = rows.shape[-1]
    spectra = np.fft.rfft(rows, axis=-1) / n  # (R, n//2 + 1)
    mean = spectra.mean(axis=0)
    bins = {h: h * tone_bin for h in range(1, n_harmonics + 1) if h * tone_bin < n // 2}
    keep = np.ones(spectra.shape[-1], dtype=bool)
    keep[0] = False
    keep[list(bins.values())] = False
    if n % 2 == 0:
        keep[-1] = False
    floor = float(np.mean(np.abs(spectra[:, keep]) ** 2))
    power = {h: float(np.abs(mean[b]) ** 2) for h, b in bins.items()}
    return TonePowers(floor, power.pop(1), power)
