"""Sampling of callables and windowed-sinc resampling checked on pure tones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quanta.errors import NonFiniteError, SchemeError
from quanta.signal import resample, sample, sample_times


def test_sample_vectorised_and_scalar_callables() -> None:
    assert sample(lambda t: 2 * t, rate=2, duration=2).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert sample(lambda t: math.cos(t), rate=1, duration=3).tolist() == pytest.approx([1, math.cos(1), math.cos(2)])
    assert sample(lambda t: t, rate=10, duration=0.5, start=1.0)[0] == 1.0
    assert sample_times(4, 3).tolist() == [0.0, 0.25, 0.5]


def _fit_tone(y: np.ndarray, rate: float, freqs: np.ndarray) -> float:
    """Frequency (from a grid) whose least-squares sine/cosine fit explains most of ``y``."""
    t = np.arange(len(y)) / rate
    best, best_f = -1.0, 0.0
    for f in freqs:
        basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)
        coef = np.linalg.lstsq(basis, y, rcond=None)[0]
        explained = float(np.sum((basis @ coef) ** 2))
        if explained > best:
            best, best_f = explained, f
    return best_f


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 44100), (44100, 8000), (48000, 44100), (16000, 12345.6)])
def test_sine_stays_the_same_sine(rate_in: float, rate_out: float) -> None:
    f = 440.0
    x = sample(lambda t: np.sin(2 * np.pi * f * t + 0.2), rate_in, 0.5)
    y = resample(x, rate_in, rate_out)
    assert len(y) == math.ceil(len(x) * rate_out / rate_in)
    ref = np.sin(2 * np.pi * f * np.arange(len(y)) / rate_out + 0.2)
    inner = slice(len(y) // 10, -len(y) // 10)  # away from the zero-padded ends
    assert np.max(np.abs(y - ref)[inner]) < 1e-4
    assert _fit_tone(y[inner], rate_out, np.arange(430.0, 450.5, 0.5)) == f


def test_downsampling_removes_what_the_new_rate_cannot_hold() -> None:
    x = sample(lambda t: np.sin(2 * np.pi * 3500 * t), 16000, 0.5)  # above the new Nyquist (2 kHz)
    y = resample(x, 16000, 4000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3  # instead of aliasing to 500 Hz at -3 dB


def test_axis_and_torch() -> None:
    x = torch.from_numpy(np.stack([np.sin(np.arange(200) * 0.1), np.cos(np.arange(200) * 0.1)], 1))  # (200, 2)
    y = resample(x, 100, 150, axis=0)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (300, 2)


def test_bad_input() -> None:
    with pytest.raises(SchemeError, match="rate"):
        sample(np.sin, rate=0, duration=1)
    with pytest.raises(SchemeError, match="rate_out"):
        resample(np.ones(10), 8000, -1)
    with pytest.raises(NonFiniteError, match="NaN"):
        resample(np.array([0.0, np.nan]), 8000, 16000)
    with pytest.raises(NonFiniteError):
        sample(lambda t: np.log(t - 1), rate=4, duration=1)
