"""KMeans: recovers well-separated centres, repairs empty clusters, is seeded, and checks its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quanta.errors import InvalidTensorError, NonFiniteError
from quanta.vq import KMeans, NotFittedError
from quanta.vq.kmeans import assign, kmeans


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8)) * 20.0
    x = centres.repeat(100, axis=0) + rng.normal(size=(600, 8)) * 0.1
    return x.astype(np.float32), centres.astype(np.float32)


def test_recovers_well_separated_centres() -> None:
    x, centres = _blobs()
    km = KMeans(6, seed=1).fit(x)
    found = km.cluster_centers_.numpy()
    # Each true centre has one fitted centre within a few noise sigmas / sqrt(100 points).
    gaps = np.linalg.norm(centres[:, None] - found[None], axis=2).min(axis=1)
    assert gaps.max() < 0.1
    labels = km.predict(x)
    assert isinstance(labels, np.ndarray) and len(np.unique(labels)) == 6
    assert km.inertia_ == pytest.approx(8 * 0.01, rel=0.2)  # mean squared distance: d * sigma^2


def test_assign_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 500, 5, generator=g), torch.randn(3, 17, 5, generator=g)
    labels, dist = assign(x, c)
    brute = ((x[:, :, None] - c[:, None]) ** 2).sum(dim=3)  # (b, n, k)
    assert torch.equal(labels, brute.argmin(dim=2))
    torch.testing.assert_close(dist, brute.min(dim=2).values, atol=1e-4, rtol=1e-5)


def test_empty_cluster_is_reseeded_at_the_farthest_point() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [30.0]]).unsqueeze(0)  # (1, 5, 1)
    start = torch.tensor([[[0.5], [10.5], [-100.0]]])  # the third centre attracts no point
    centers, _, _ = kmeans(x, 3, n_iter=1, init=start)
    # The update moves the second centre to mean(10, 11, 30) = 17 and the empty one onto the point farthest from
    # its centre in that assignment: 30 (19.5 from 10.5).
    assert sorted(centers[0, :, 0].tolist()) == [0.5, 17.0, 30.0]
    centers, err, _ = kmeans(x, 3, n_iter=5, init=start)
    assert sorted(centers[0, :, 0].tolist()) == [0.5, 10.5, 30.0] and float(err[0]) == pytest.approx(0.2)


def test_duplicates_fewer_distinct_points_than_clusters() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)
    km = KMeans(5, seed=0).fit(x)
    assert km.inertia_ == 0.0


def test_seeded_and_subsampled() -> None:
    x, _ = _blobs()
    a = KMeans(6, seed=3, max_points_per_centroid=10).fit(x).cluster_centers_
    b = KMeans(6, seed=3, max_points_per_centroid=10).fit(x).cluster_centers_
    assert torch.equal(a, b)


def test_tol_stops_early() -> None:
    x, _ = _blobs()
    assert KMeans(6, n_iter=50, tol=1e-3).fit(x).n_iter_ < 50


def test_torch_in_torch_out() -> None:
    x, _ = _blobs()
    km = KMeans(6).fit(torch.from_numpy(x))
    assert isinstance(km.predict(torch.from_numpy(x)), torch.Tensor)


def test_bad_input() -> None:
    with pytest.raises(InvalidTensorError, match="needs at least 8 training vectors, got 5"):
        KMeans(8).fit(np.zeros((5, 2), np.float32))
    x = np.ones((20, 2), np.float32)
    x[7, 1] = np.nan
    with pytest.raises(NonFiniteError, match="row 7"):
        KMeans(2).fit(x)
    with pytest.raises(NotFittedError, match="call fit"):
        KMeans(2).predict(x)
    with pytest.raises(InvalidTensorError, match="2-D"):
        KMeans(2).fit(np.zeros(10, np.float32))


def test_integer_weights_equal_repeated_rows() -> None:
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)  # no clusters: seeds decide the optimum
    counts = np.random.default_rng(4).integers(1, 5, size=len(x))
    settings = {"n_iter": 30, "init_size": 10**6, "max_points_per_centroid": None, "seed": 2}
    weighted = KMeans(8, **settings).fit(x, sample_weight=counts.astype(np.float32))  # type: ignore[arg-type]
    repeated = KMeans(8, **settings).fit(np.repeat(x, counts, axis=0))  # type: ignore[arg-type]
    # Same seeds (k-means++ inverts the same CDF) and the same Lloyd updates: equal up to float summation order.
    torch.testing.assert_close(weighted.cluster_centers_, repeated.cluster_centers_, atol=1e-5, rtol=1e-5)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-4)
    assert weighted.n_iter_ == repeated.n_iter_


def test_one_cluster_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(200, 3)).astype(np.float32), rng.uniform(0, 3, size=200).astype(np.float32)
    km = KMeans(1, n_iter=2).fit(x, sample_weight=w)
    np.testing.assert_allclose(km.cluster_centers_[0].numpy(), np.average(x, axis=0, weights=w), atol=1e-5)
    expected = np.average(((x - np.average(x, axis=0, weights=w)) ** 2).sum(axis=1), weights=w)
    assert km.inertia_ == pytest.approx(expected, rel=1e-5)


def test_zero_weight_points_do_not_move_centres() -> None:
    x, centres = _blobs()
    far = np.full((5, x.shape[1]), 1e3, np.float32)  # outliers that weigh nothing
    w = np.concatenate([np.ones(len(x)), np.zeros(5)]).astype(np.float32)
    km = KMeans(6, seed=1).fit(np.concatenate([x, far]), sample_weight=w)
    gaps = np.linalg.norm(centres[:, None] - km.cluster_centers_.numpy()[None], axis=2).min(axis=1)
    assert gaps.max() < 0.1


def test_bad_weights() -> None:
    x, _ = _blobs()
    with pytest.raises(InvalidTensorError, match=r"shape \(600,\)"):
        KMeans(2).fit(x, sample_weight=np.ones(5, np.float32))
    with pytest.raises(InvalidTensorError, match=">= 0"):
        KMeans(2).fit(x, sample_weight=-np.ones(len(x), np.float32))
    with pytest.raises(InvalidTensorError, match="zero everywhere"):
        KMeans(2).fit(x, sample_weight=np.zeros(len(x), np.float32))
    with pytest.raises(NonFiniteError, match="index 3"):
        KMeans(2).fit(x, sample_weight=np.where(np.arange(len(x)) == 3, np.nan, 1.0))
    with pytest.raises(InvalidTensorError, match="numpy array or a torch tensor"):
        KMeans(2).fit(x, sample_weight=[1.0] * len(x))
