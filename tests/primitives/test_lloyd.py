import torch

import quanta
from quanta.primitives.lloyd import lloyd_max, nearest_level

# Max (1960), optimal quantizers for a unit Gaussian: mean squared error and positive levels.
LLOYD_MAX_MSE = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}
LLOYD_MAX_LEVELS = {1: [0.7980], 2: [0.4528, 1.510], 3: [0.2451, 0.7560, 1.344, 2.152]}


def _distortion(x: torch.Tensor, levels: torch.Tensor) -> float:
    return float(((x - levels[nearest_level(x, levels).long()]) ** 2).mean())


def test_reproduces_lloyd_max_distortions_on_normal_quantiles() -> None:
    # 10^6 equally likely points of the standard normal (its quantiles at (i + 0.5) / n).
    n = 1_000_000
    x = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
    for bits, expected in LLOYD_MAX_MSE.items():
        levels = lloyd_max(x, 1 << bits)
        assert abs(_distortion(x, levels) / expected - 1) < 0.005, bits
        if bits in LLOYD_MAX_LEVELS:
            positive = levels[levels > 0].tolist()
            expected_levels = LLOYD_MAX_LEVELS[bits]
            assert all(abs(a / b - 1) < 0.005 for a, b in zip(positive, expected_levels, strict=True)), positive


def test_reproduces_lloyd_max_distortions_on_random_samples() -> None:
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    for bits, expected in LLOYD_MAX_MSE.items():
        assert abs(_distortion(x, lloyd_max(x, 1 << bits)) / expected - 1) < 0.005, bits


def test_weights_ignore_zero_weight_samples(gen: torch.Generator) -> None:
    x = torch.randn(1, 500, generator=gen)
    w = torch.ones_like(x)
    w[:, 250:] = 0
    weighted = lloyd_max(x, 4, weight=w)
    subset = lloyd_max(x[:, :250], 4)
    assert torch.allclose(weighted, subset, atol=1e-6)


def test_batched_rows_are_independent(gen: torch.Generator) -> None:
    x = torch.randn(3, 200, generator=gen) * torch.tensor([[1.0], [10.0], [0.1]])
    batched = lloyd_max(x, 8)
    for i in range(3):
        assert torch.allclose(batched[i], lloyd_max(x[i], 8), atol=1e-6)


def test_fewer_distinct_values_than_levels() -> None:
    x = torch.tensor([[1.0, 1.0, 2.0, 2.0, 2.0]])
    levels = lloyd_max(x, 8)
    assert torch.isfinite(levels).all()
    assert _distortion(x[0], levels[0]) == 0.0


def test_fitted_codebook_beats_uniform_grid_of_same_bits(gen: torch.Generator) -> None:
    x = torch.randn(16, 256, generator=gen) ** 3  # heavy tails: where non-uniform levels pay off
    for bits in (2, 3, 4):
        lloyd = quanta.quantize_tensor(x, f"lloyd{bits}:ch").dequantize()
        uniform = quanta.quantize_tensor(x, f"int{bits}:ch:asym").dequantize()
        assert quanta.metrics.mse(x, lloyd) < quanta.metrics.mse(x, uniform), bits


def _reference_optimum(values: list[float], weights: list[float], k: int) -> float:
    """Exact weighted 1-D k-means error by plain dynamic programming over sorted values (O(k n^2), pure Python)."""
    pairs = sorted(zip(values, weights, strict=True))
    n = len(pairs)

    def cost(i: int, j: int) -> float:  # values i..j-1 in one cell, at their weighted mean
        w = sum(p[1] for p in pairs[i:j])
        if w == 0:
            return 0.0
        mean = sum(p[0] * p[1] for p in pairs[i:j]) / w
        return sum(p[1] * (p[0] - mean) ** 2 for p in pairs[i:j])

    best = [cost(0, j) for j in range(n + 1)]
    for m in range(2, min(k, n) + 1):
        best = [min(best[i] + cost(i, j) for i in range(m - 1, j)) if j >= m else best[j] for j in range(n + 1)]
    return best[n]


def test_small_groups_get_the_exact_optimum() -> None:
    g = torch.Generator().manual_seed(5)
    for n, k in ((5, 2), (9, 4), (16, 8), (32, 4), (32, 8)):
        x = torch.randn(12, n, generator=g) ** 3
        w = torch.rand(12, n, generator=g)
        for weight in (None, w):
            levels = lloyd_max(x, k, weight=weight)
            idx = nearest_level(x, levels).long()
            ww = torch.ones_like(x) if weight is None else weight
            ours = (ww * (x - levels.gather(-1, idx)) ** 2).sum(-1)
            for r in range(12):
                ref = _reference_optimum(x[r].tolist(), ww[r].tolist(), k)
                assert float(ours[r]) <= ref * (1 + 1e-4) + 1e-6, (n, k, r, float(ours[r]), ref)
