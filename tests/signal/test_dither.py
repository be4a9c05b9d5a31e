"""Dither decorrelates the error and removes harmonics; noise shaping moves noise above a cutoff."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quanta.errors import SchemeError
from quanta.signal import band_power, dither_noise, ntf_band_gain, requantize, shaper_coefficients, tone_powers

LEVEL = 10 ** (-40 / 20)  # -40 dBFS


def test_tpdf_error_is_uncorrelated_with_the_signal() -> None:
    n = 1 << 18
    x = LEVEL * np.sin(2 * np.pi * (math.sqrt(2) / 81) * np.arange(n))
    e = requantize(x, 8).values - x
    assert abs(np.corrcoef(x, e)[0, 1]) < 0.01
    assert np.var(e) / (requantize(x, 8).step ** 2 / 4) == pytest.approx(1.0, rel=0.02)  # Δ²/12 + Δ²/6
    e0 = requantize(x, 8, dither="none").values - x
    assert abs(np.corrcoef(x, e0)[0, 1]) > 0.1  # without dither the error follows the signal


def test_third_harmonic_of_minus_40_dbfs_sine_drops_below_the_noise_floor() -> None:
    n, k0 = 1 << 14, 157  # 157 whole cycles per record: every harmonic falls on one bin
    x = LEVEL * np.sin(2 * np.pi * k0 * np.arange(n) / n + 0.1)
    plain = tone_powers(requantize(x, 8, dither="none").values, k0)
    dithered = tone_powers(np.stack([requantize(x, 8, seed=s).values for s in range(16)]), k0)
    assert plain.harmonic_db(3) > 20.0  # undithered: a clear distortion line
    assert dithered.harmonic_db(3) < 0.0  # dithered: below the mean noise power per bin


def test_noise_shaping_moves_noise_above_the_cutoff_as_its_ntf_predicts() -> None:
    rate, n, cutoff = 44100.0, 1 << 15, 5512.5
    x = 0.3 * np.sin(2 * np.pi * 1000.3 * np.arange(n) / rate)
    low = {}
    for shape in (None, 1, 2, "f9"):
        r = requantize(x, 8, shape=shape)
        e = r.values - x
        white = r.step**2 / 4  # TPDF: quantizer error plus dither
        c = shaper_coefficients(shape)
        low[shape] = band_power(e, rate, 0, cutoff)
        high = band_power(e, rate, cutoff, rate / 2)
        assert low[shape] / white == pytest.approx(ntf_band_gain(c, 0, cutoff, rate), rel=0.15)
        assert high / white == pytest.approx(ntf_band_gain(c, cutoff, rate / 2, rate), rel=0.05)
        assert r.clipped == 0
    assert low[None] > 4 * low[1] > 4 * low[2] > low["f9"]


def test_band_powers_add_up_and_flat_ntf() -> None:
    e = np.random.default_rng(1).normal(size=4096)
    total = band_power(e, 8000, 0, 1000) + band_power(e, 8000, 1000, 4000)
    assert total == pytest.approx(np.mean(e**2), rel=1e-12)
    assert ntf_band_gain((), 0, 1000, 8000) == pytest.approx(0.25)
    assert ntf_band_gain((-1.0,), 0, 4000, 8000) == pytest.approx(2.0)


def test_dither_distributions() -> None:
    r = dither_noise((200000,), 1.0, "rpdf")
    t = dither_noise((200000,), 1.0, "tpdf")
    assert r.min() >= -0.5 and r.max() < 0.5 and np.var(r) == pytest.approx(1 / 12, rel=0.02)
    assert t.min() > -1 and t.max() < 1 and np.var(t) == pytest.approx(1 / 6, rel=0.02)


def test_bad_settings() -> None:
    with pytest.raises(SchemeError, match="dither"):
        requantize(np.zeros(4), 8, dither="gauss")  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="noise shaper"):
        requantize(np.zeros(4), 8, shape="f99")
