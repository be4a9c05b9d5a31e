"""Training steps of the residual quantizer: progressive-dimension k-means and least-squares codebook refinement.

Progressive-dimension k-means (faiss's ``ProgressiveDimClustering``, the default of its ``ResidualQuantizer``):
the points are rotated onto their principal axes and k-means runs on the first ``d_i = floor(d ** (i / steps))``
axes for ``i = 1 .. steps``, each run warm-started from the previous centres padded with zeros (the mean on the new
axes); the centres are then rotated back. Clustering the high-variance axes first places the centres by the data's
large-scale structure: on clustered data, k-means on all axes at once settles early into a worse local optimum.

Least-squares refinement (faiss's ``Train_refine_codebook``): with the codes ``C`` of the training vectors fixed,
the codebooks ``B`` (all stages stacked, ``S * ksub`` rows) that minimise ``||X - C B||^2`` solve the normal
equations ``(C^T C) B = C^T X``, where ``C^T C`` holds how often two entries occur in the same code. Unlike the
stage-by-stage residual training, this lets every codebook adapt to the ones after it. ``C^T C`` is singular (a
vector added to one stage and subtracted from another changes nothing; unused entries have empty rows), so the
system gets a small ridge towards the current codebooks: unused entries keep their values. The system has
``(S * ksub)^2`` entries; above ``MAX_JOINT`` rows (16 stages of 256) the codebooks are instead updated one stage at
a time (block coordinate descent, each stage's entries the mean of what the other stages leave of their vectors),
which costs ``O(n S d)`` per sweep and lowers the same error towards the same minimum.
"""

from __future__ import annotations

import torch

from quanta.vq.kmeans import kmeans

__all__ = ["least_squares_codebooks", "progressive_kmeans"]

RIDGE = 1e-6
"""Ridge of the normal equations, relative to the mean diagonal of ``C^T C``: small enough to leave the solution
of used entries unchanged to float32 precision, large enough to make the system solvable."""


MAX_JOINT = 4096
"""Largest ``S * ksub`` solved jointly: a 4096^2 float64 system is 134 MB and a few seconds on one core."""

SWEEPS = 4
"""Stage-by-stage sweeps when the joint system is too large."""


def progressive_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    steps: int = 10,
    n_iter: int = 10,
    tol: float = 0.0,
    max_points: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``k`` centres ``(k, d)`` of ``x`` ``(n, d)`` by k-means on growing prefixes of its principal axes.

    Args:
        x: points ``(n, d)`` float32, ``n >= k``.
        k: clusters.
        steps: dimension steps (faiss: 10); ``steps=1`` is plain k-means (in a rotated basis).
        n_iter: at most this many k-means updates per step (faiss: 10).
        tol: stop a step early once an update lowers the error by less than this fraction.
        max_points: train on a seeded subset of at most this many points (the same for every step); None: all.
        seed: seed of the subset and of the k-means++ seeding of the first step.
    """
    n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    if max_points is not None and n > max_points:
        x = x[torch.randperm(n, generator=g)[:max_points].sort().values.to(x.device)]
    mean = x.mean(dim=0)
    xc = x - mean
    xd = xc.double()
    _, axes = torch.linalg.eigh(xd.T @ xd)  # eigenvalues ascending: flip for the principal axes first
    axes = axes.flip(1).to(x.dtype)  # (d, d), orthonormal columns
    y = (xc @ axes).unsqueeze(0)  # (1, n, d) in principal coordinates
    centers: torch.Tensor | None = None
    for i in range(1, steps + 1):
        di = max(1, int(d ** (i / steps)))
        init = None if centers is None else torch.nn.functional.pad(centers, (0, max(0, di - centers.shape[2])))
        centers, _, _ = kmeans(
            y[:, :, :di].contiguous(),
            k,
            n_iter=n_iter,
            tol=tol,
            init=init,
            max_points_per_centroid=None,
            seed=seed + i,
        )
    assert centers is not None
    centers = torch.nn.functional.pad(centers[0], (0, d - centers.shape[2]))  # int(d ** 1.0) may round below d
    return centers @ axes.T + mean


def least_squares_codebooks(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """The codebooks ``(S, ksub, d)`` that minimise ``sum_i ||x_i - sum_s B_s[codes_is]||^2`` for fixed codes.

    Args:
        x: vectors ``(n, d)``.
        codes: their sub-codes ``(n, S)`` int64.
        codebooks: the current codebooks ``(S, ksub, d)``; entries no code uses keep these values.
    """
    stages, ksub, d = codebooks.shape
    size = stages * ksub
    if size > MAX_JOINT:
        return _stagewise(x, codes, codebooks, SWEEPS)
    rows = codes + torch.arange(stages, device=codes.device) * ksub  # (n, S): row of each sub-code in stacked B
    # C^T C: co-occurrence counts of every pair of entries, one bincount over the n * S * S pairs.
    pairs = (rows.unsqueeze(2) * size + rows.unsqueeze(1)).reshape(-1)
    gram = torch.bincount(pairs, minlength=size * size).reshape(size, size).double()
    rhs = torch.zeros(size, d, dtype=torch.float64, device=x.device)
    rhs.index_add_(0, rows.reshape(-1), x.double().repeat_interleave(stages, dim=0))  # C^T X
    ridge = RIDGE * float(gram.diagonal().mean())
    old = codebooks.reshape(size, d).double()
    gram.diagonal().add_(ridge)
    solved = torch.linalg.solve(gram, rhs + ridge * old)  # (C^T C + r I) B = C^T X + r B_old
    return solved.to(codebooks.dtype).reshape(stages, ksub, d)


def _stagewise(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, sweeps: int) -> torch.Tensor:
    """Block coordinate descent on ``||X - C B||^2``: each stage's entries, in turn, the least-squares optimum with
    the other stages fixed (the mean of ``x - sum_{t != s} B_t[c_t]`` over the vectors that use the entry)."""
    stages, ksub, d = codebooks.shape
    books = codebooks.clone()
    index = torch.arange(stages, device=x.device)
    recon = books[index, codes].sum(dim=1)  # (n, d)
    for _ in range(sweeps):
        for s in range(stages):
            c = codes[:, s]
            target = x - recon + books[s, c]  # what the other stages leave: (n, d)
            sums = torch.zeros(ksub, d, dtype=x.dtype, device=x.device).index_add_(0, c, target)
            counts = torch.bincount(c, minlength=ksub).unsqueeze(1)
            books[s] = torch.where(counts > 0, sums / counts.clamp_min(1).to(x.dtype), books[s])
            recon = x - target + books[s, c]  # x - target: the other stages' sum
    return books
