"""Product quantization (Jegou et al. 2011), optionally behind a learned rotation (OPQ, Ge et al. 2013).

A vector of ``d`` dimensions is cut into ``m`` sub-vectors of ``dsub = d / m``; each is replaced by the index of its
nearest entry in that sub-space's codebook of ``ksub = 2 ** nbits`` entries, trained by k-means (all ``m``
codebooks in one batched run). Codes are ``ceil(m * nbits / 8)`` bytes per vector in faiss's layout.

OPQ learns an orthogonal ``R`` (``d x d``) so that ``x R`` is easier to product-quantize. It alternates, as faiss's
``OPQMatrix`` does, a few warm-started k-means updates of the PQ in the rotated space with the orthogonal
Procrustes step ``R = U V^T`` where ``U S V^T = svd(X^T Y)`` and ``Y`` is the PQ reconstruction of ``X R``;
then the final PQ is trained on ``X R`` with the full ``n_iter``. Rotations preserve distances, so queries are
rotated too and the lookup tables are the plain PQ ones.
"""

from __future__ import annotations

import torch

from quanta.errors import InvalidTensorError, SchemeError
from quanta.vq.base import Array, VectorQuantizer, as_matrix, check_nbits, check_positive
from quanta.vq.kmeans import assign, kmeans

__all__ = ["ProductQuantizer"]


class ProductQuantizer(VectorQuantizer):
    """Product quantizer with ``m`` sub-quantizers of ``nbits`` bits each, optionally OPQ-rotated.

    Args:
        m: number of sub-quantizers; must divide ``d`` unless ``pad=True``.
        nbits: bits per sub-code, 1..16 (``ksub = 2 ** nbits`` entries per codebook).
        opq: learn a rotation in front of the PQ (OPQ).
        opq_iter: OPQ alternations (each: ``opq_pq_iter`` k-means updates and one Procrustes step).
        opq_pq_iter: k-means updates per OPQ alternation (warm-started).
        opq_init: the rotation OPQ starts from: ``"random"`` (a random orthogonal matrix, as faiss), ``"identity"``
            (plain PQ, which OPQ then improves), or ``"best"``: both, keeping the one with the lower final error.
        pad: when ``m`` does not divide ``d``, append zero dimensions up to the next multiple of ``m`` (they cost
            nothing in the codes and are dropped by ``decode``) instead of raising :class:`SchemeError`.
        n_iter: at most this many k-means updates per codebook (faiss's default, 25).
        tol: stop a codebook's k-means early once an update lowers the error by less than this fraction (in every
            sub-space); k-means++ seeding gets there in about half of faiss's 25 updates. 0 runs all ``n_iter``.
        max_points_per_centroid: train on at most this many vectors per codebook entry (faiss: 256).
        seed: seed of every random choice; equal seeds give equal codebooks.
        device: where to compute; None: CPU.

    Learned state: ``codebooks_`` ``(m, ksub, dsub)``, ``rotation_`` ``(d_pad, d_pad)`` or None, ``d_`` (input
    dimension), ``dsub_``.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
        >>> pq = ProductQuantizer(m=8, nbits=4).fit(X)
        >>> codes = pq.encode(X)
        >>> codes.shape, codes.dtype, pq.code_size
        ((1000, 4), dtype('uint8'), 4)
        >>> bool((pq.encode(pq.decode(codes)) == codes).all())
        True
    """

    def __init__(
        self,
        m: int = 8,
        nbits: int = 8,
        *,
        opq: bool = False,
        opq_iter: int = 20,
        opq_pq_iter: int = 4,
        opq_init: str = "best",
        pad: bool = False,
        n_iter: int = 25,
        tol: float = 1e-3,
        max_points_per_centroid: int | None = 256,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        self.m = m
        self.nbits = nbits
        self.opq = opq
        self.opq_iter = opq_iter
        self.opq_pq_iter = opq_pq_iter
        self.opq_init = opq_init
        self.pad = pad
        self.n_iter = n_iter
        self.tol = tol
        self.max_points_per_centroid = max_points_per_centroid
        self.seed = seed
        self.device = device

    @property
    def m_codes(self) -> int:  # type: ignore[override]
        return self.m

    def fit(self, X: Array) -> ProductQuantizer:
        """Train the ``m`` codebooks (and the OPQ rotation) on ``X`` ``(n, d)``; return ``self``.

        Raises:
            SchemeError: ``m`` does not divide ``d`` (and ``pad`` is off).
            BitWidthError: ``nbits`` outside 1..16.
            InvalidTensorError: fewer than ``2 ** nbits`` training vectors (the message says how many are needed).
            NonFiniteError: a NaN or Inf value.
        """
        m = check_positive(self.m, "m")
        ksub = 1 << check_nbits(self.nbits)
        check_positive(self.n_iter, "n_iter")
        x, _ = as_matrix(X, "X", self.device_)
        n, d = x.shape
        if d % m and not self.pad:
            raise SchemeError(
                f"m={m} sub-quantizers must divide the dimension d={d}; choose m among the divisors of {d}, "
                f"or pass pad=True to append {(-d) % m} zero dimensions."
            )
        if m > d:
            raise SchemeError(f"m={m} sub-quantizers exceed the dimension d={d}; choose m <= {d}.")
        if n < ksub:
            raise InvalidTensorError(
                f"ProductQuantizer with nbits={self.nbits} has {ksub} entries per codebook and needs at least {ksub} "
                f"training vectors, got {n}; pass more vectors or lower nbits."
            )
        self.d_ = d
        self.dsub_ = -(-d // m)
        x = self._pad(x)
        self.rotation_: torch.Tensor | None = None
        if self.opq:
            self.rotation_ = self._fit_rotation(x, ksub)
            x = x @ self.rotation_
        self.codebooks_ = self._train(x, ksub, self.n_iter, None, self.seed)
        return self

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.m * self.dsub_ - x.shape[1]
        return torch.nn.functional.pad(x, (0, extra)) if extra else x

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, m * dsub)`` -> ``(m, n, dsub)``."""
        return x.reshape(x.shape[0], self.m, self.dsub_).transpose(0, 1)

    def _train(self, x: torch.Tensor, ksub: int, n_iter: int, init: torch.Tensor | None, seed: int) -> torch.Tensor:
        centers, _, _ = kmeans(
            self._split(x).contiguous(),
            ksub,
            n_iter=n_iter,
            tol=self.tol if init is None else 0.0,
            init=init,
            max_points_per_centroid=self.max_points_per_centroid,
            seed=seed,
        )
        return centers  # (m, ksub, dsub)

    def _assign(self, x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
        labels, _ = assign(self._split(x), codebooks)  # (m, n)
        return labels.T.contiguous()

    def _reconstruct(self, codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
        """Rotated-space vectors ``(n, m * dsub)`` of sub-codes ``(n, m)``."""
        parts = codebooks[torch.arange(self.m, device=codes.device), codes]  # (n, m, dsub)
        return parts.reshape(codes.shape[0], -1)

    def _fit_rotation(self, x: torch.Tensor, ksub: int) -> torch.Tensor:
        """OPQ (non-parametric): alternate warm-started PQ updates and orthogonal Procrustes."""
        g = torch.Generator().manual_seed(self.seed)
        limit = 256 * ksub if self.max_points_per_centroid is None else self.max_points_per_centroid * ksub
        if x.shape[0] > limit:  # faiss's OPQMatrix trains on at most 65,536 vectors as well
            x = x[torch.randperm(x.shape[0], generator=g)[:limit].sort().values.to(x.device)]
        dim = x.shape[1]
        starts = {"random": ["random"], "identity": ["identity"], "best": ["identity", "random"]}.get(self.opq_init)
        if starts is None:
            raise SchemeError(f"opq_init must be 'best', 'identity' or 'random', got {self.opq_init!r}.")
        best: tuple[float, torch.Tensor] | None = None
        for start in starts:
            if start == "random":  # spreads the variance over the sub-spaces, as faiss's OPQMatrix starts
                q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
                rot = (q * torch.sign(torch.diagonal(r))).to(x)
            else:
                rot = torch.eye(dim, dtype=x.dtype, device=x.device)
            rot, err = self._alternate(x, rot, ksub)
            if best is None or err < best[0]:
                best = (err, rot)
        assert best is not None
        return best[1]

    def _alternate(self, x: torch.Tensor, rot: torch.Tensor, ksub: int) -> tuple[torch.Tensor, float]:
        """``opq_iter`` alternations from ``rot``; the rotation and the error of its last PQ."""
        codebooks: torch.Tensor | None = None
        err = float("inf")
        for it in range(check_positive(self.opq_iter, "opq_iter")):
            xr = x @ rot
            n_iter = self.opq_pq_iter if codebooks is not None else self.n_iter  # faiss: 40 updates at first
            codebooks = self._train(xr, ksub, n_iter, codebooks, self.seed + it)
            y = self._reconstruct(self._assign(xr, codebooks), codebooks)  # (n, dim)
            err = float(((xr - y) ** 2).sum(dim=1).mean())
            u, _, vh = torch.linalg.svd((x.T @ y).double())  # min ||x R - y||: R = U V^T
            rot = (u @ vh).to(x)
        return rot, err

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pad(x)
        return x @ self.rotation_ if self.rotation_ is not None else x

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._assign(self._transform(x), self.codebooks_)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        y = self._reconstruct(codes, self.codebooks_)
        if self.rotation_ is not None:
            y = y @ self.rotation_.T
        return y[:, : self.d_]

    def _tables(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        qs = self._split(self._transform(q))  # (m, nq, dsub)
        cb = self.codebooks_  # (m, ksub, dsub)
        # ||q_j - c||^2 = ||q_j||^2 - 2 q_j.c + ||c||^2, per sub-space: (m, nq, ksub)
        t = torch.baddbmm((cb * cb).sum(dim=2).unsqueeze(1), qs, cb.transpose(1, 2), alpha=-2.0)
        t += (qs * qs).sum(dim=2, keepdim=True)
        return t.clamp_min_(0.0).transpose(0, 1), None
