"""Rate-distortion of vector quantizers on Gaussian and Laplacian sources: the space-filling and shape gains.

A scalar quantizer at ``R`` bits a sample cannot go below Lloyd-Max's distortion; coding ``d`` samples together
with a ``2^(R d)``-entry codebook can, and approaches Shannon's ``2^{-2R}`` as ``d`` grows. Unlike the scalar
quantizers of :mod:`quanta.signal.rate_distortion` (exact integrals over the density), a codebook is trained by
k-means (:func:`quanta.vq.kmeans.kmeans`) on seeded samples of the source and its distortion is measured on
*other* samples (held out), so the figure is an estimate: its standard error is printed beside it.

The dimension is the largest with ``R d <= max_bits`` (codebooks of at most ``2^max_bits`` entries; 2^10 by
default, 2^16 allowed); at rates where that leaves ``d = 1`` the codebook is a sampled Lloyd-Max quantizer.
Beyond one codebook, ``stages > 1`` codes a vector with a residual quantizer (:class:`quanta.vq.ResidualQuantizer`,
``stages`` codebooks of ``R d / stages`` bits, beam-searched), which reaches higher dimensions at high rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quanta.errors import SchemeError
from quanta.signal.rate_distortion import Source, _check_source
from quanta.signal.uniform import check_bits
from quanta.vq.kmeans import assign, kmeans

__all__ = ["VQPoint", "vq_dimension", "vq_distortion"]

MAX_ENTRY_BITS = 16


@dataclass(frozen=True)
class VQPoint:
    """One trained codebook: source, rate (bits/sample), vector dimension, entries, distortion (relative to the
    variance) on held-out samples and its standard error."""

    source: str
    rate: float
    dim: int
    entries: int
    distortion: float
    stderr: float
    stages: int = 1


def vq_dimension(rate: float, max_bits: int = 10) -> int:
    """The largest vector dimension ``d`` with ``rate * d`` a whole number of bits ``<= max_bits`` (at least 1).

    Example:
        >>> [vq_dimension(r) for r in (1, 2, 3, 4, 5, 8)]
        [10, 5, 3, 2, 2, 1]
    """
    best = 1
    for d in range(1, max_bits + 1):
        bits = rate * d
        if bits <= max_bits and abs(bits - round(bits)) < 1e-9:
            best = d
    return best


def _samples(source: str, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, d)`` unit-variance samples of the source."""
    if source == "gaussian":
        return torch.randn(n, d, generator=generator)
    # Laplacian of variance 1: scale 1/sqrt(2); the difference of two unit exponentials is Laplace(0, 1).
    e = torch.empty(2, n, d).exponential_(generator=generator)
    return (e[0] - e[1]) / math.sqrt(2.0)


def vq_distortion(
    source: Source,
    rate: float,
    dim: int | None = None,
    *,
    max_bits: int = 10,
    train_per_entry: int = 64,
    test_vectors: int = 100_000,
    n_iter: int = 50,
    stages: int = 1,
    seed: int = 0,
) -> VQPoint:
    """Train a ``2^(rate * dim)``-entry k-means codebook on samples of ``source`` and measure it on fresh ones.

    Args:
        source: ``"gaussian"`` or ``"laplacian"`` (unit variance).
        rate: bits per sample, 1..8 (``rate * dim`` must be a whole number of bits, at most 16).
        dim: vector dimension; None: :func:`vq_dimension` (``rate * dim <= max_bits``).
        max_bits: codebook size limit used to choose ``dim`` (entries ``<= 2^max_bits``).
        train_per_entry: training vectors per codebook entry (at least 100,000 in all).
        test_vectors: held-out vectors the distortion is measured on.
        n_iter: Lloyd updates of the k-means.
        stages: residual codebooks; above 1 a vector's ``rate * dim`` bits are split over ``stages`` codebooks of
            ``2^(rate * dim / stages)`` entries each (at most 2^16), trained and beam-encoded by
            :class:`quanta.vq.ResidualQuantizer`.
        seed: seed of the samples and of k-means.

    Returns:
        The :class:`VQPoint` (distortion per sample relative to the variance, and its standard error).

    Raises:
        SchemeError: an unknown source, a rate outside 1..8, or ``rate * dim`` not a whole number of bits in 1..16.

    Example:
        >>> p = vq_distortion("gaussian", 1, 4, test_vectors=20_000)
        >>> p.entries, 0.25 < p.distortion < 0.3634   # between Shannon and the 1-bit Lloyd-Max quantizer
        (16, True)
    """
    _check_source(source)
    if not 1 <= rate <= 8:
        raise SchemeError(f"rate {rate} bits/sample is outside 1..8.")
    check_bits(math.ceil(rate))
    d = vq_dimension(rate, max_bits) if dim is None else int(dim)
    bits = rate * d
    per_stage = bits / stages if stages >= 1 else 0.0
    if d < 1 or abs(per_stage - round(per_stage)) > 1e-9 or not 1 <= round(per_stage) <= MAX_ENTRY_BITS:
        raise SchemeError(
            f"rate {rate} x dimension {d} = {bits:g} bits a vector over {stages} stage(s); each stage must get a "
            f"whole number of bits in 1..{MAX_ENTRY_BITS} (e.g. rate 1 with dim 8, rate 8 with dim 4 and stages 2)."
        )
    k = 1 << round(per_stage)
    generator = torch.Generator().manual_seed(seed)
    if stages > 1:
        from quanta.vq import ResidualQuantizer

        train = _samples(source, max(train_per_entry * k, 100_000), d, generator)
        test = _samples(source, test_vectors, d, generator)
        # Plain k-means per stage: progressive dimensions only pay on long vectors (these are 2-8 values).
        rq = ResidualQuantizer(stages, round(per_stage), progressive_steps=None, refine_iter=1, seed=seed).fit(train)
        err = (torch.as_tensor(rq.decode(rq.encode(test))) - test).square().sum(1).double() / d
        sem = float(err.std() / math.sqrt(err.numel()))
        return VQPoint(source, float(rate), d, k, float(err.mean()), sem, stages)
    # At least 100,000 training vectors: a scalar codebook of 256 levels needs many samples to place its tails.
    train = _samples(source, max(train_per_entry * k, 100_000), d, generator)
    test = _samples(source, test_vectors, d, generator)
    centers = kmeans(train.unsqueeze(0), k, n_iter=n_iter, max_points_per_centroid=None, seed=seed)[0][0]
    err = assign(test.unsqueeze(0), centers.unsqueeze(0))[1][0] / d  # (test,) squared error per sample
    err = err.double()
    return VQPoint(source, float(rate), d, k, float(err.mean()), float(err.std() / math.sqrt(err.numel())))
