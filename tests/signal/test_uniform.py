"""Uniform quantizer: SQNR against 6.02 N + 1.76 and against the exact sine expectation; clipping; kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quanta.errors import BitWidthError, NonFiniteError, SchemeError
from quanta.signal import quantize_uniform, sine_sqnr_exact, sqnr, sqnr_theory

N = 1 << 18
# cycles per sample irrational, so the phases are equidistributed (non-commensurate with the rate)
SINE = np.sin(2 * np.pi * (math.sqrt(2) / 97) * np.arange(N) + 0.3)


@pytest.mark.parametrize("bits", range(10, 17))
def test_full_scale_sine_matches_theory_at_10_to_16_bits(bits: int) -> None:
    r = quantize_uniform(SINE, bits)
    assert abs(sqnr(SINE, r.values) - sqnr_theory(bits)) < 0.1
    assert r.clipped == 0


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("mode", ["midrise", "midtread"])
def test_measured_sqnr_matches_the_exact_expectation(bits: int, mode: str) -> None:
    if mode == "midtread" and bits == 1:
        pytest.skip("a 1-bit mid-tread grid is {-A, 0}: no sine fits inside it")
    # the midtread grid has no level at +A, so keep the sine inside its range (amplitude 1 - step)
    amp = 1.0 if mode == "midrise" else 1.0 - 2.0 / (1 << bits)
    x = amp * SINE
    measured = sqnr(x, quantize_uniform(x, bits, mode=mode).values)  # type: ignore[arg-type]
    assert abs(measured - sine_sqnr_exact(bits, amplitude=amp, mode=mode)) < 0.01  # type: ignore[arg-type]


def test_low_bit_gap_is_documented_value() -> None:
    gap = {b: sine_sqnr_exact(b) - sqnr_theory(b) for b in (4, 8)}
    assert gap[4] == pytest.approx(-0.529, abs=0.005)
    assert gap[8] == pytest.approx(-0.139, abs=0.005)


def test_exact_expectation_against_dense_phase_integration() -> None:
    # independent check of the closed form: average the error over a dense grid of phases (midpoint rule)
    theta = (np.arange(4_000_000) + 0.5) * (2 * np.pi / 4_000_000)
    x = np.sin(theta)
    step = 2.0 / 16
    xq = np.clip((np.floor(x / step) + 0.5) * step, -1 + step / 2, 1 - step / 2)
    dense = 10 * math.log10(0.5 / np.mean((x - xq) ** 2))
    assert sine_sqnr_exact(4) == pytest.approx(dense, abs=1e-3)


def test_levels_codes_and_clipping() -> None:
    r = quantize_uniform(np.array([0.1, -0.6, 2.0, -1.0, 1.0]), bits=2)
    assert r.values.tolist() == [0.25, -0.75, 0.75, -0.75, 0.75]
    assert r.codes.tolist() == [2, 0, 3, 0, 3]
    assert r.step == 0.5 and r.clipped == 1 and r.clipped_fraction == pytest.approx(0.2)
    t = quantize_uniform(np.array([0.0, 0.2, -1.0, 0.9]), bits=2, mode="midtread")
    assert t.values.tolist() == [0.0, 0.0, -1.0, 0.5] and t.clipped == 1  # 0.9 > top level 0.5 + step/2


def test_error_is_at_most_half_a_step_in_range() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 10000)
    for bits in (1, 5, 12, 24):
        r = quantize_uniform(x, bits)
        assert np.max(np.abs(r.values - x)) <= r.step / 2 * (1 + 1e-12)
        assert quantize_uniform(r.values, bits).codes.tolist() == r.codes.tolist()  # idempotent


def test_torch_in_torch_out() -> None:
    r = quantize_uniform(torch.linspace(-1, 1, 11), 3)
    assert isinstance(r.values, torch.Tensor) and r.values.dtype == torch.float64
    assert isinstance(r.codes, torch.Tensor) and r.codes.dtype == torch.int64
    assert isinstance(quantize_uniform(np.zeros(3), 3).values, np.ndarray)


def test_bad_input() -> None:
    with pytest.raises(BitWidthError, match=r"1\.\.24"):
        quantize_uniform(SINE, 25)
    with pytest.raises(BitWidthError):
        quantize_uniform(SINE, 0)
    with pytest.raises(NonFiniteError, match="NaN"):
        quantize_uniform(np.array([0.0, np.nan]), 8)
    with pytest.raises(SchemeError, match="full_scale"):
        quantize_uniform(SINE, 8, full_scale=0)
    with pytest.raises(SchemeError, match="mode"):
        quantize_uniform(SINE, 8, mode="midstep")  # type: ignore[arg-type]
    with pytest.raises(BitWidthError):
        sqnr_theory(30)
