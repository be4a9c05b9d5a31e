"""Residual quantization: ``stages`` codebooks over the full dimension, each coding what the previous left.

A vector is approximated by ``c_1[i_1] + c_2[i_2] + ... + c_S[i_S]``. Encoding is a beam search: after each stage
the ``beam_size`` best partial sums (by the exact squared error ``||x - sum||^2``) are kept and extended by every
entry of the next codebook; ``beam_size=1`` is the greedy encoder (nearest entry to the current residual).

Training follows faiss's ``ResidualQuantizer``: codebooks are trained stage by stage, stage ``s`` on the residuals
of every beam entry left by stages ``1 .. s-1`` (``n * beam`` vectors, subsampled to ``max_points_per_centroid *
ksub``), and the beam is then extended with the new codebook. Each stage's k-means is progressive in the dimension
(faiss's default ``Train_progressive_dim``): the residuals are rotated onto their principal axes, k-means runs on
the first ``d_i = floor(d ** (i / steps))`` axes for ``i = 1 .. steps``, each run warm-started from the previous
centres (zero on the new axes, which is the mean there), and the centres are rotated back. Clustering the
high-variance axes first puts the centres where the data's large-scale structure is (on clustered data the whole
codebook otherwise settles into one local optimum early). ``progressive_steps=None`` runs plain k-means instead.
Then (faiss's optional ``Train_refine_codebook``, on here by default) ``refine_iter`` rounds re-solve all codebooks
jointly by least squares for the training vectors' codes and re-encode them, each round kept only if it lowers the
training error (see :mod:`quanta.vq.rq_train`).

Asymmetric distances: ``||q - y||^2 = ||q||^2 - 2 sum_s <q, c_s[i_s]> + ||y||^2``; the tables hold
``-2 <q, c_s[j]>`` and the index stores ``||y||^2`` per vector (faiss stores an encoded norm in the code instead;
here the codes hold the sub-codes only, so ``code_size = ceil(stages * nbits / 8)``).
"""

from __future__ import annotations

import torch

from quanta.errors import InvalidTensorError, SchemeError
from quanta.vq.base import Array, VectorQuantizer, as_matrix, check_nbits, check_positive
from quanta.vq.kmeans import BLOCK, kmeans
from quanta.vq.rq_train import least_squares_codebooks, progressive_kmeans

__all__ = ["ResidualQuantizer", "beam_search", "extend_beam", "start_beam"]


Beam = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Beam state: codes ``(n, B, stages so far)`` int64, residuals ``(n, B, d)``, squared errors ``(n, B)``."""


def start_beam(x: torch.Tensor) -> Beam:
    """The empty beam of ``x`` ``(n, d)``: no codes, the residual is ``x`` itself."""
    return torch.zeros(x.shape[0], 1, 0, dtype=torch.int64, device=x.device), x.unsqueeze(1), (x * x).sum(1, True)


def extend_beam(state: Beam, cb: torch.Tensor, beam_size: int) -> Beam:
    """Extend every beam entry by every entry of ``cb`` ``(ksub, d)``, keep the ``beam_size`` best (best first)."""
    codes, resid, err = state
    n, beam, d = resid.shape
    ksub = cb.shape[0]
    cb_norm = (cb * cb).sum(dim=1)
    cand = torch.empty(n, beam * ksub, device=resid.device)
    step = max(1, BLOCK // (beam * ksub))
    for i in range(0, n, step):
        r = resid[i : i + step].reshape(-1, d)  # (rows * B, d)
        # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2, with ||r||^2 the error carried in the beam: (rows, B * ksub)
        part = torch.addmm(cb_norm, r, cb.T, alpha=-2.0).reshape(-1, beam, ksub) + err[i : i + step, :, None]
        cand[i : i + step] = part.reshape(-1, beam * ksub)
    err, best = cand.topk(min(beam_size, beam * ksub), dim=1, largest=False)  # sorted, best first
    parent, code = best // ksub, best % ksub
    rows = torch.arange(n, device=resid.device).unsqueeze(1)
    codes = torch.cat([codes[rows, parent], code.unsqueeze(2)], dim=2)
    return codes, resid[rows, parent] - cb[code], err.clamp_min(0.0)


def beam_search(x: torch.Tensor, codebooks: torch.Tensor, beam_size: int) -> torch.Tensor:
    """Sub-codes ``(n, S)`` of ``x`` ``(n, d)`` by beam search through ``codebooks`` ``(S, ksub, d)``."""
    state = start_beam(x)
    for cb in codebooks:
        state = extend_beam(state, cb, beam_size)
    return state[0][:, 0]


class ResidualQuantizer(VectorQuantizer):
    """Residual (additive) quantizer with ``stages`` codebooks of ``2 ** nbits`` full-dimension entries.

    Args:
        stages: number of codebooks (sub-codes per vector).
        nbits: bits per sub-code, 1..16.
        beam_size: vectors kept per stage when encoding; 1 is greedy (faiss's default ``max_beam_size``: 5).
        train_beam_size: beam used while training; None: ``beam_size``.
        n_iter: at most this many k-means updates per stage (faiss's default, 25).
        tol: stop a stage's k-means early once an update lowers the error by less than this fraction; 0 runs all
            ``n_iter``.
        progressive_steps: dimension steps of each stage's progressive k-means (faiss: 10); None: plain k-means
            on all dimensions with ``n_iter`` updates.
        progressive_iter: at most this many k-means updates per dimension step (faiss: 10).
        refine_iter: least-squares refinement rounds after the stage-wise training (each: solve, re-encode, keep if
            the training error fell); 0: none (faiss's default).
        max_points_per_centroid: train each stage on at most this many residuals per entry (faiss: 256).
        seed: seed of every random choice.
        device: where to compute; None: CPU.

    Learned state: ``codebooks_`` ``(stages, ksub, d)``, ``d_``.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
        >>> rq = ResidualQuantizer(stages=3, nbits=4, beam_size=2).fit(X)
        >>> codes = rq.encode(X)
        >>> codes.shape, rq.code_size
        ((500, 2), 2)
        >>> bool(rq.reconstruction_mse(X) < ResidualQuantizer(stages=1, nbits=4).fit(X).reconstruction_mse(X))
        True
    """

    def __init__(
        self,
        stages: int = 8,
        nbits: int = 8,
        *,
        beam_size: int = 5,
        train_beam_size: int | None = None,
        n_iter: int = 25,
        tol: float = 1e-3,
        progressive_steps: int | None = 10,
        progressive_iter: int = 10,
        refine_iter: int = 3,
        max_points_per_centroid: int | None = 256,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        self.stages = stages
        self.nbits = nbits
        self.beam_size = beam_size
        self.train_beam_size = train_beam_size
        self.n_iter = n_iter
        self.tol = tol
        self.progressive_steps = progressive_steps
        self.progressive_iter = progressive_iter
        self.refine_iter = refine_iter
        self.max_points_per_centroid = max_points_per_centroid
        self.seed = seed
        self.device = device

    @property
    def m_codes(self) -> int:  # type: ignore[override]
        return self.stages

    def fit(self, X: Array) -> ResidualQuantizer:
        """Train the codebooks stage by stage on ``X`` ``(n, d)``; return ``self``.

        Raises:
            BitWidthError: ``nbits`` outside 1..16.
            InvalidTensorError: fewer than ``2 ** nbits`` training vectors (the message says how many are needed).
            NonFiniteError: a NaN or Inf value.
        """
        stages = check_positive(self.stages, "stages")
        ksub = 1 << check_nbits(self.nbits)
        check_positive(self.beam_size, "beam_size")
        beam = check_positive(self.train_beam_size or self.beam_size, "train_beam_size")
        x, _ = as_matrix(X, "X", self.device_)
        n, d = x.shape
        if n < ksub:
            raise InvalidTensorError(
                f"ResidualQuantizer with nbits={self.nbits} has {ksub} entries per codebook and needs at least "
                f"{ksub} training vectors, got {n}; pass more vectors or lower nbits."
            )
        steps = None if self.progressive_steps is None else check_positive(self.progressive_steps, "progressive_steps")
        codebooks: list[torch.Tensor] = []
        state = start_beam(x)
        for s in range(stages):
            train = state[1].reshape(-1, d)  # residuals of every beam entry: (n * B, d)
            if steps is None:
                cb = kmeans(
                    train.unsqueeze(0),
                    ksub,
                    n_iter=self.n_iter,
                    tol=self.tol,
                    max_points_per_centroid=self.max_points_per_centroid,
                    seed=self.seed + s,
                )[0][0]
            else:
                limit = None if self.max_points_per_centroid is None else self.max_points_per_centroid * ksub
                cb = progressive_kmeans(
                    train,
                    ksub,
                    steps=steps,
                    n_iter=check_positive(self.progressive_iter, "progressive_iter"),
                    tol=self.tol,
                    max_points=limit,
                    seed=self.seed + s,
                )
            codebooks.append(cb)
            state = extend_beam(state, cb, beam)
        books = torch.stack(codebooks)
        if isinstance(self.refine_iter, bool) or not isinstance(self.refine_iter, int) or self.refine_iter < 0:
            raise SchemeError(f"refine_iter must be an integer >= 0 (0: no refinement), got {self.refine_iter!r}.")
        if self.refine_iter:
            limit = None if self.max_points_per_centroid is None else self.max_points_per_centroid * ksub
            if limit is not None and n > limit:  # a seeded subset, as for k-means: the system needs no more
                g = torch.Generator().manual_seed(self.seed)
                x = x[torch.randperm(n, generator=g)[:limit].sort().values.to(x.device)]
            books = self._refine(x, books)
        self.codebooks_ = books
        self.d_ = d
        return self

    def _refine(self, x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
        """Up to ``refine_iter`` least-squares updates of ``books``, each kept only if it lowers the error of ``x``."""
        stages = torch.arange(books.shape[0], device=x.device)

        def error(cb: torch.Tensor, codes: torch.Tensor) -> float:
            return float(((x - cb[stages, codes].sum(dim=1)) ** 2).sum(dim=1).mean())

        codes = beam_search(x, books, self.beam_size)
        err = error(books, codes)
        for _ in range(self.refine_iter):
            new = least_squares_codebooks(x, codes, books)
            # New codebooks give new codes; a beam search is not sure to find better ones, so check the error.
            new_codes = beam_search(x, new, self.beam_size)
            new_err = error(new, new_codes)
            if not new_err < err:
                break
            books, codes, err = new, new_codes, new_err
        return books

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return beam_search(x, self.codebooks_, self.beam_size)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        stages = torch.arange(self.stages, device=codes.device)
        return self.codebooks_[stages, codes].sum(dim=1)  # (n, S, d) -> (n, d)

    def _tables(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.einsum("nd,skd->nsk", q, self.codebooks_) * -2.0  # (nq, S, ksub)
        return t, (q * q).sum(dim=1)

    def _vector_terms(self, codes: torch.Tensor) -> torch.Tensor | None:
        y = self._decode(codes)
        return (y * y).sum(dim=1)
