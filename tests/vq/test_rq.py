"""ResidualQuantizer: beam search against exhaustive search, greedy vs beam, layout and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from quanta.errors import InvalidTensorError
from quanta.vq import NotFittedError, ResidualQuantizer


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
