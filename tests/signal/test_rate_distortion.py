"""Rate-distortion: Max's Gaussian table, closed forms, bounds, and the PNG plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from quanta.primitives import lloyd_max
from quanta.signal import (
    ecsq_distortion,
    lloyd_max_density,
    plot_rate_distortion,
    rate_distortion_table,
    shannon_distortion,
    uniform_distortion,
)

MAX_1960 = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497, 5: 0.002499}  # Gaussian, Max (1960) Table I


@pytest.mark.parametrize(("bits", "expected"), MAX_1960.items())
def test_lloyd_max_gaussian_matches_max_1960(bits: int, expected: float) -> None:
    assert lloyd_max_density("gaussian", bits).distortion == pytest.approx(expected, rel=0.005)


def test_one_bit_closed_forms() -> None:
    g = lloyd_max_density("gaussian", 1)
    assert g.levels[1] == pytest.approx(math.sqrt(2 / math.pi))  # E|X|
    assert g.distortion == pytest.approx(1 - 2 / math.pi)
    assert lloyd_max_density("laplacian", 1).distortion == pytest.approx(0.5)  # 1 - (E|X|)^2, E|X| = 1/sqrt 2


def test_samples_agree_with_the_primitive_lloyd() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=gen, dtype=torch.float64)
    levels = lloyd_max(x, 4).double()
    assert torch.allclose(levels, torch.from_numpy(lloyd_max_density("gaussian", 2).levels), atol=0.01)


def test_ordering_and_high_rate_gaps() -> None:
    for row in rate_distortion_table([2, 4, 6], ["gaussian", "laplacian"]):
        assert row.shannon < row.ecsq < row.lloyd_max <= row.uniform * (1 + 1e-9)
    _, d = ecsq_distortion("gaussian", 6)
    assert 10 * math.log10(d / shannon_distortion(6)) == pytest.approx(10 * math.log10(math.pi * math.e / 6), abs=0.02)
    step, d = uniform_distortion("gaussian", 2)
    assert step == pytest.approx(0.9957, abs=1e-3) and d == pytest.approx(0.1188, abs=1e-4)  # Max's uniform table


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "rd.png"
    table = rate_distortion_table([1, 2, 3])
    assert plot_rate_distortion(path, table) == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-16:]
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
