"""Trained vector quantizers against the exact scalar optimum (Lloyd-Max) and Shannon's bound."""

from __future__ import annotations

import pytest

from quanta.errors import SchemeError
from quanta.signal.rate_distortion import lloyd_max_density, shannon_distortion
from quanta.signal.rate_distortion_vq import vq_dimension, vq_distortion


@pytest.mark.parametrize(("source", "rate", "dim"), [("gaussian", 1, 4), ("gaussian", 2, 3), ("laplacian", 1, 4)])
def test_a_vector_codebook_lies_between_lloyd_max_and_shannon(source: str, rate: int, dim: int) -> None:
    point = vq_distortion(source, rate, dim, test_vectors=20_000)  # type: ignore[arg-type]
    assert point.entries == 2 ** (rate * dim)
    scalar = lloyd_max_density(source, rate).distortion  # type: ignore[arg-type]
    # Coding d samples together beats the best scalar quantizer (the space-filling / shape gain) but cannot beat
    # the rate-distortion bound (a Gaussian bound: the Laplacian's own bound is lower, so only the scalar side is
    # checked for it); 4 standard errors of the held-out estimate.
    assert point.distortion + 4 * point.stderr < scalar
    if source == "gaussian":
        assert point.distortion - 4 * point.stderr > shannon_distortion(rate)


def test_a_one_dimensional_codebook_is_a_sampled_lloyd_max_quantizer() -> None:
    point = vq_distortion("gaussian", 2, 1, test_vectors=50_000)
    assert point.distortion == pytest.approx(lloyd_max_density("gaussian", 2).distortion, rel=0.03)


def test_the_dimension_is_the_largest_whole_bit_codebook() -> None:
    assert [vq_dimension(r, 10) for r in (1, 2, 3, 4, 5, 6, 8)] == [10, 5, 3, 2, 2, 1, 1]
    assert vq_dimension(1.5, 12) == 8  # 12 bits over 8 samples


def test_equal_seeds_give_equal_estimates() -> None:
    a, b = (vq_distortion("laplacian", 2, 2, test_vectors=5_000, seed=3) for _ in range(2))
    assert a == b


@pytest.mark.parametrize(("rate", "dim", "words"), [(0, 2, "outside 1..8"), (1.5, 3, "whole number"), (4, 5, "1..16")])
def test_bad_rates_say_what_works(rate: float, dim: int, words: str) -> None:
    with pytest.raises(SchemeError, match=words):
        vq_distortion("gaussian", rate, dim)


def test_residual_codebooks_reach_past_one_codebook_but_cost_against_a_full_one() -> None:
    # Two 16-entry residual stages on pairs code 8 bits a pair, as one 256-entry codebook does; the residual one is
    # a constrained codebook (sums of entries), so it cannot do better, and it beats one 16-entry stage (4 bits).
    full = vq_distortion("gaussian", 4, 2, test_vectors=20_000)
    residual = vq_distortion("gaussian", 4, 2, stages=2, test_vectors=20_000)
    single = vq_distortion("gaussian", 2, 2, test_vectors=20_000)
    assert residual.stages == 2 and residual.entries == 16
    assert full.distortion - 4 * full.stderr < residual.distortion < single.distortion
