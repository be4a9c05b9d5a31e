"""Binary, ternary, power-of-two and fixed-point grids against hand-computed values."""

import pytest
import torch

import quanta


def test_binary_scale_is_mean_abs_and_is_least_squares_optimal(gen: torch.Generator) -> None:
    w = torch.randn(4, 50, generator=gen)
    qt = quanta.quantize_tensor(w, "binary:ch")
    a = w.abs().mean(1, keepdim=True)
    assert torch.allclose(qt.params["scale"], a)
    assert torch.equal(qt.dequantize(), torch.where(w >= 0, a, -a))
    # XNOR-Net: a = mean|w| minimises ||w - a sign(w)||^2; nudging it either way is worse.
    err = lambda s: ((w - s * torch.where(w >= 0, 1.0, -1.0)) ** 2).sum()  # noqa: E731
    assert err(a) < err(a * 1.01) and err(a) < err(a * 0.99)
    assert qt.nbytes == 4 * 50 // 8 + 4 * 4  # 1 bit per weight + one fp32 scale per row


def test_ternary_threshold_and_scale_by_hand() -> None:
    w = torch.tensor([[0.1, -0.5, 1.0, -2.0]])  # mean|w| = 0.9, threshold 0.63: keep 1.0 and -2.0
    qt = quanta.quantize_tensor(w, "ternary:ch")
    assert qt.unpacked_codes().tolist() == [[0, 0, 1, -1]]
    assert float(qt.params["scale"]) == 1.5  # mean of the kept magnitudes
    assert qt.dequantize().tolist() == [[0.0, 0.0, 1.5, -1.5]]
    assert qt.codes.numel() == 1  # four 2-bit codes in one byte


def test_power_of_two_levels_and_zero_code() -> None:
    s = quanta.QScheme.parse("pot4")
    levels = s.fmt.levels({"scale": torch.ones(1, 1)}, s).reshape(-1)
    expected = {0.0} | {2.0**-k for k in range(7)} | {-(2.0**-k) for k in range(7)}
    assert set(levels.tolist()) == expected
    x = torch.tensor([1.0, 0.74, 0.76, -0.3, 0.01, 0.007, 0.0, -1.0])  # absmax 1: scale 1
    qt = quanta.quantize_tensor(x, "pot4")
    # 0.74 is nearer 0.5 than 1; 0.76 nearer 1; -0.3 -> -0.25; 0.01 -> 2^-6; 0.007 < 2^-7 -> 0.
    assert qt.dequantize().tolist() == [1.0, 0.5, 1.0, -0.25, 2.0**-6, 0.0, 0.0, -1.0]
    assert qt.unpacked_codes().tolist()[0][6] == 0  # the canonical zero has the sign bit clear


def test_fixed_point_q4_4() -> None:
    x = torch.tensor([1.03125, 1.09375, -0.03, 7.96, 100.0, -8.0, -100.0])
    qt = quanta.quantize_tensor(x, "q4.4")
    # step 1/16: 16.5 -> 16 and 17.5 -> 18 (half to even); saturate at [-128, 127] / 16
    assert qt.dequantize().tolist() == [1.0, 1.125, -0.0, 7.9375, 7.9375, -8.0, -8.0]
    assert qt.params == {} and qt.nbytes == 7


def test_two_level_binary_levels_are_the_means_of_the_two_halves() -> None:
    x = torch.tensor([[0.0, 0.0, 0.2, 1.0, 3.0, 5.0]])  # mean 1.533: lower {0, 0, 0.2, 1.0}, upper {3, 5}
    qt = quanta.quantize_tensor(x, "binary:tensor:fmin")
    assert float(qt.params["offset"]) == pytest.approx(0.3) and float(qt.params["scale"]) == pytest.approx(3.7)
    # the midpoint 2.15 separates the codes
    assert qt.unpacked_codes().flatten().tolist() == [0, 0, 0, 0, 1, 1]
    assert qt.dequantize().flatten().tolist() == pytest.approx([0.3, 0.3, 0.3, 0.3, 4.0, 4.0])
