"""ResidualQuantizer: beam search against exhaustive search, greedy vs beam, layout and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from quanta.errors import InvalidTensorError, SchemeError
from quanta.vq import NotFittedError, ResidualQuantizer, rq_train
from quanta.vq.kmeans import assign, kmeans
from quanta.vq.rq_train import least_squares_codebooks, progressive_kmeans


def test_wide_beam_is_exhaustive_over_two_stages(gaussian: np.ndarray) -> None:
    rq = ResidualQuantizer(stages=2, nbits=3, beam_size=8).fit(gaussian)  # beam = ksub keeps every first choice
    codes = rq.encode(gaussian[:200])
    cb = rq.codebooks_.numpy()  # (2, 8, d)
    sums = np.stack([cb[0, i] + cb[1, j] for i, j in itertools.product(range(8), range(8))])  # (64, d)
    err = ((gaussian[:200, None] - sums[None]) ** 2).sum(axis=2)
    best = err.min(axis=1)
    ours = ((gaussian[:200] - rq.decode(codes)) ** 2).sum(axis=1)
    np.testing.assert_allclose(ours, best, rtol=1e-4, atol=1e-5)
    assert codes.shape == (200, 1)  # 2 x 3 bits in one byte


def test_encode_decode_encode_is_stable_when_the_search_is_exhaustive(gaussian: np.ndarray) -> None:
    rq = ResidualQuantizer(stages=2, nbits=3, beam_size=8).fit(gaussian)
    codes = rq.encode(gaussian)
    assert np.array_equal(rq.encode(rq.decode(codes)), codes)


def test_beam_beats_greedy_and_stages_lower_the_error(gaussian: np.ndarray) -> None:
    rq = ResidualQuantizer(stages=4, nbits=4, beam_size=1).fit(gaussian)
    greedy = rq.reconstruction_mse(gaussian)
    rq.beam_size = 8
    assert rq.reconstruction_mse(gaussian) < greedy
    two = ResidualQuantizer(stages=2, nbits=4).fit(gaussian).reconstruction_mse(gaussian)
    assert greedy < two < float((gaussian**2).sum(axis=1).mean())


def test_layout_and_torch(gaussian: np.ndarray) -> None:
    rq = ResidualQuantizer(stages=3, nbits=4, seed=2).fit(torch.from_numpy(gaussian))
    codes = rq.encode(torch.from_numpy(gaussian))
    assert isinstance(codes, torch.Tensor) and codes.shape == (1200, 2) and rq.code_size == 2
    again = ResidualQuantizer(stages=3, nbits=4, seed=2).fit(gaussian)
    assert torch.equal(again.codebooks_, rq.codebooks_)


def test_bad_input(gaussian: np.ndarray) -> None:
    with pytest.raises(InvalidTensorError, match="needs at least 256 training vectors, got 10"):
        ResidualQuantizer(stages=2, nbits=8).fit(gaussian[:10])
    with pytest.raises(NotFittedError):
        ResidualQuantizer().encode(gaussian)
    with pytest.raises(InvalidTensorError, match="beam_size"):
        ResidualQuantizer(stages=2, nbits=2, beam_size=0).fit(gaussian)
    with pytest.raises(SchemeError, match="refine_iter"):
        ResidualQuantizer(stages=2, nbits=2, refine_iter=-1).fit(gaussian)
    with pytest.raises(InvalidTensorError, match="progressive_steps"):
        ResidualQuantizer(stages=2, nbits=2, progressive_steps=0).fit(gaussian)


def test_least_squares_codebooks_match_numpy_lstsq() -> None:
    rng = np.random.default_rng(0)
    stages, ksub, d, n = 3, 4, 5, 200
    x = rng.normal(size=(n, d))
    codes = rng.integers(0, ksub, size=(n, stages))
    codes[:, 2] = np.minimum(codes[:, 2], 2)  # entry 3 of the last stage is never used: it keeps its value
    old = torch.from_numpy(rng.normal(size=(stages, ksub, d)).astype(np.float32))
    new = least_squares_codebooks(torch.from_numpy(x).float(), torch.from_numpy(codes), old).double().numpy()
    one_hot = np.zeros((n, stages * ksub))
    one_hot[np.arange(n)[:, None], codes + np.arange(stages) * ksub] = 1.0  # C (n, S * ksub)
    ref, *_ = np.linalg.lstsq(one_hot, x, rcond=None)
    # C^T C is singular (shifts between stages), so compare what is unique: the reconstructions C B.
    np.testing.assert_allclose(one_hot @ new.reshape(-1, d), one_hot @ ref, atol=1e-4)
    np.testing.assert_array_equal(new[2, 3], old[2, 3].double().numpy())


def test_progressive_kmeans_beats_kmeans_on_anisotropic_gaussian_noise() -> None:
    # What residuals after the first stages look like: Gaussian noise, a few directions wider than the rest.
    rng = np.random.default_rng(1)
    scales = np.geomspace(2.0, 0.2, 24)
    x = torch.from_numpy((rng.normal(size=(4000, 24)) * scales @ _rotation(rng, 24)).astype(np.float32))
    centres = progressive_kmeans(x, 64, steps=10, n_iter=10, seed=0)
    _, err, _ = kmeans(x.unsqueeze(0), 64, n_iter=100, seed=0)
    ours = float(assign(x.unsqueeze(0), centres.unsqueeze(0))[1].mean())
    assert ours < float(err[0])  # fewer updates in total, lower error


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def _clustered(n: int = 3000, d: int = 32, clusters: int = 16) -> np.ndarray:
    """Gaussian clusters with anisotropic spreads (the benchmark's synthetic set, smaller)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(clusters, size=n)
    scales = rng.uniform(0.3, 1.5, size=(clusters, d))
    return (rng.normal(size=(clusters, d))[labels] * 4.0 + rng.normal(size=(n, d)) * scales[labels]).astype(np.float32)


def test_progressive_and_refined_training_beat_plain_kmeans_training() -> None:
    x = _clustered()
    plain = ResidualQuantizer(stages=3, nbits=5, progressive_steps=None, refine_iter=0).fit(x)
    new = ResidualQuantizer(stages=3, nbits=5).fit(x)
    assert new.reconstruction_mse(x) <= plain.reconstruction_mse(x)


def test_refinement_never_raises_the_training_error(gaussian: np.ndarray) -> None:
    base = ResidualQuantizer(stages=3, nbits=4, refine_iter=0).fit(gaussian)
    refined = ResidualQuantizer(stages=3, nbits=4, refine_iter=3).fit(gaussian)
    assert refined.reconstruction_mse(gaussian) <= base.reconstruction_mse(gaussian) * (1 + 1e-6)


def test_stagewise_updates_approach_the_joint_least_squares(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(300, 4)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 4, size=(300, 3)))
    old = torch.from_numpy(rng.normal(size=(3, 4, 4)).astype(np.float32))

    def error(cb: torch.Tensor) -> float:
        return float(((x - cb[torch.arange(3), codes].sum(1)) ** 2).sum())

    joint = least_squares_codebooks(x, codes, old)
    monkeypatch.setattr(rq_train, "MAX_JOINT", 4)  # force the stage-by-stage path
    errors = [error(old)]
    for sweeps in (1, 2, 50):
        monkeypatch.setattr(rq_train, "SWEEPS", sweeps)
        errors.append(error(least_squares_codebooks(x, codes, old)))
    assert errors == sorted(errors, reverse=True)  # every sweep lowers the error ...
    assert errors[-1] == pytest.approx(error(joint), rel=1e-4)  # ... towards the joint optimum
