"""Vector codebooks for weights: ``vq{d}x{k}`` maps each run of ``d`` consecutive values to one of ``k`` centres.

A group's values ``(rows, n, g)`` are cut into ``g // d`` vectors of ``d`` consecutive values (per tensor: the
flattened tensor, so vectors run along the input dimension of a Linear whose ``in_features`` is a multiple of
``d``). The codebook ``(rows, n, k, d)`` is fitted by k-means (:func:`quanta.vq.kmeans.kmeans`, seeded: equal
inputs give equal codebooks) and stored in the scheme's scale dtype; it counts toward ``nbytes``. With ``r2`` a
second codebook of ``k`` entries is fitted on the residuals (residual VQ, two stages), and a vector is coded as
the sum of one entry of each.

Code layout. A vector's code has ``B = stages * log2(k)`` bits; QTensor stores one code of ``b = B / d`` bits per
*value*, so the vector's code is split into ``d`` sub-codes of ``b`` bits, least significant first, sub-code ``i``
at value ``i`` of the vector. The packed stream is therefore bit for bit the stream of ``B``-bit vector codes,
and bits per weight are ``B / d`` plus the codebook: ``d`` must divide ``B`` (``vq4x256``: 2 bits, ``vq2x64``:
3 bits, ``vq8x256``: 1 bit, ``vq4x16r2``: 2 bits). A group whose length is not a multiple of ``d`` ends in a
short vector of ``r < d`` values; its ``r * b`` bits address the first ``2**(r*b)`` codes, and the nearest of
them on its ``r`` values is chosen.

Importance. ``fit``'s ``weight`` (one importance per value, e.g. ``diag(H)`` of the layer's inputs from the
``iw`` method) turns the fit into weighted k-means: assignments and centres minimise ``sum w (x - c)^2``, so the
error is measured where the layer's output is sensitive. The weighted assignment is kept as a helper parameter
for :meth:`VectorFormat.encode` (which sees no weights); a re-encoding without it is plain nearest-centre.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.errors import BitWidthError, UnsupportedError
from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_param
from quanta.vq.kmeans import assign, kmeans

if TYPE_CHECKING:
    from quanta.scheme import QScheme

__all__ = ["VectorFormat"]

DIMS = (2, 4, 8)
N_ITER = 25
"""Lloyd updates of the unweighted k-means, and of the weighted refinement that follows it."""


def _lexsort_rows(book: torch.Tensor) -> torch.Tensor:
    """Sort each ``(k, d)`` codebook of ``book`` ``(b, k, d)`` lexicographically: a canonical entry order."""
    order = torch.arange(book.shape[1]).expand(book.shape[0], -1)
    for j in reversed(range(book.shape[2])):
        key = book.gather(1, order.unsqueeze(-1).expand(-1, -1, book.shape[2]))[..., j]
        order = order.gather(1, key.sort(dim=1, stable=True).indices)
    return book.gather(1, order.unsqueeze(-1).expand(-1, -1, book.shape[2]))


def _weighted_assign(x: torch.Tensor, w: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Labels ``(b, n)`` minimising ``sum_j w_j (x_j - c_j)^2`` for points ``x``/weights ``w`` ``(b, n, d)``."""
    # sum w (x - c)^2 = sum w x^2 - 2 (w x) . c + w . c^2; the first term does not depend on c.
    d2 = torch.baddbmm(torch.bmm(w, (book * book).transpose(1, 2)), w * x, book.transpose(1, 2), alpha=-2.0)
    return d2.argmin(dim=2)


def _fit_stage(x: torch.Tensor, w: torch.Tensor | None, k: int) -> torch.Tensor:
    """One codebook ``(b, k, d)`` for points ``x`` ``(b, n, d)`` (weighted k-means with weights ``w``)."""
    b, n, d = x.shape
    if n <= k:  # every vector is its own entry (padded with copies of the first): exact
        book = torch.cat([x, x[:, :1].expand(b, k - n, d)], dim=1)
    else:
        book = kmeans(x, k, n_iter=N_ITER, init_size=max(8 * k, min(n, 1 << 16)), seed=0)[0]
        offsets = (torch.arange(b) * k).unsqueeze(1)
        ones = torch.ones_like(x) if w is None else w
        # Weighted Lloyd updates warm-started at the unweighted centres (one plain update without weights), in
        # float64: a cluster of equal vectors gets exactly that vector, so re-fitting decoded values is exact.
        for _ in range(1 if w is None else N_ITER):
            labels = assign(x, book)[0] if w is None else _weighted_assign(x, ones, book)
            flat = (labels + offsets).reshape(-1)
            num = torch.zeros(b * k, d, dtype=torch.float64).index_add_(0, flat, (ones * x).reshape(-1, d).double())
            den = torch.zeros(b * k, d, dtype=torch.float64).index_add_(0, flat, ones.reshape(-1, d).double())
            mean = (num / den.clamp_min(1e-300)).float().reshape(b, k, d)
            book = torch.where(den.reshape(b, k, d) > 0, mean, book)
    return book


class VectorFormat(Format):
    """``vq{d}x{k}[r2]``: ``d``-dimensional vectors coded by a ``k``-entry k-means codebook (two with ``r2``)."""

    shareable = True  # one codebook for many layers (``:shared``; fitted jointly by quanta.quantize)

    def __init__(self, dim: int, entries: int, stages: int = 1) -> None:
        if dim not in DIMS:
            raise BitWidthError(f"vector length {dim} is not supported; use one of {DIMS} (e.g. vq4x256).")
        if entries < 2 or entries > 1 << 16 or entries & (entries - 1):
            raise BitWidthError(f"codebook size {entries} must be a power of two in 2..65536 (e.g. vq4x256).")
        if stages not in (1, 2):
            raise BitWidthError(f"residual stages {stages} not supported; use 1 (vq4x256) or 2 (vq4x256r2).")
        code_bits = stages * (entries.bit_length() - 1)
        if code_bits % dim:
            valid = [1 << b for b in range(dim // stages or 1, 17) if (stages * b) % dim == 0]
            raise BitWidthError(
                f"vq{dim}x{entries}{'r2' if stages == 2 else ''}: a {code_bits}-bit vector code over {dim} values "
                f"is not a whole number of bits per value (quanta stores one code of B/d bits per value); "
                f"with d={dim}{' and r2' if stages == 2 else ''} use k in {valid}."
            )
        self.dim, self.entries, self.stages = dim, entries, stages
        self.entry_bits = entries.bit_length() - 1
        self.bits = code_bits // dim  # bits per value; the vector's code is d sub-codes of this width
        self.name = f"vq{dim}x{entries}" + ("r2" if stages == 2 else "")
        self.summary = f"{dim}-d vectors, {entries}-entry k-means codebook" + (" x2 residual" if stages == 2 else "")

    def _names(self) -> list[str]:
        return ["codebook"] if self.stages == 1 else ["codebook", "codebook2"]

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        return {name: ((self.entries, self.dim), dtype) for name in self._names()}

    # -- vectors <-> sub-codes -------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full vectors ``(rows * n, g // d, d)`` and the short tail ``(rows * n, g % d)`` of blocks ``x``."""
        rows, n, g = x.shape
        full = (g // self.dim) * self.dim
        flat = x.reshape(rows * n, g)
        return flat[:, :full].reshape(rows * n, -1, self.dim), flat[:, full:]

    def _books(self, params: Params) -> list[torch.Tensor]:
        return [params[name].float().flatten(0, 1) for name in self._names()]  # each (rows * n, k, d)

    def _vectors(self, codes: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
        """Decoded vectors ``(b, m, d)`` of vector codes ``(b, m)`` (int64)."""
        out = torch.zeros(*codes.shape, self.dim)
        for i, book in enumerate(books):
            idx = (codes >> (i * self.entry_bits)) & (self.entries - 1)
            out += book.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.dim))
        return out

    def _to_sub(self, codes: torch.Tensor, width: int) -> torch.Tensor:
        """Vector codes ``(..., m)`` -> sub-codes ``(..., m * width)`` of ``bits`` bits each."""
        shifts = torch.arange(width) * self.bits
        return ((codes.unsqueeze(-1) >> shifts) & ((1 << self.bits) - 1)).flatten(-2).to(torch.int32)

    def _from_sub(self, sub: torch.Tensor, width: int) -> torch.Tensor:
        """Sub-codes ``(..., m * width)`` -> vector codes ``(..., m)`` (int64)."""
        shifts = torch.arange(width) * self.bits
        return (sub.long().reshape(*sub.shape[:-1], -1, width) << shifts).sum(-1)

    # -- the Format API --------------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        rows, n, _ = x.shape
        vecs, tail = self._split(x)
        wvecs = None if weight is None else self._split(weight)[0]
        if vecs.shape[1] == 0:  # shorter than one vector: fit on the zero-padded tail
            vecs = torch.cat([tail, tail.new_zeros(rows * n, self.dim - tail.shape[1])], dim=1).unsqueeze(1)
            wvecs = None
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        params: Params = {}
        target = vecs
        labels = torch.zeros(vecs.shape[:2], dtype=torch.int64)
        for i, name in enumerate(self._names()):
            stored = storage_param(_fit_stage(target, wvecs, self.entries), dtype, "codebook entry")
            book = _lexsort_rows(stored.float())  # sorted after the cast: a canonical order of the stored entries
            stage = assign(target, book)[0] if wvecs is None else _weighted_assign(target, wvecs, book)
            labels |= stage << (i * self.entry_bits)
            target = target - book.gather(1, stage.unsqueeze(-1).expand(-1, -1, self.dim))
            params[name] = book.to(dtype).reshape(rows, n, self.entries, self.dim)
        if weight is not None and vecs.shape[1] * self.dim == x.shape[2]:
            # The weighted assignment, for encode (which sees no weights); not stored.
            params["_codes"] = self._to_sub(labels, self.dim).reshape(x.shape)
        return params

    def weighted_codes(self, x: torch.Tensor, params: Params, weight: torch.Tensor) -> torch.Tensor | None:
        """Sub-codes ``(rows, n, g)`` of blocks ``x`` on the given codebooks minimising ``sum w (x - c)^2`` (stages
        chosen greedily), or ``None`` when ``g`` is not a multiple of ``d`` (then plain nearest-entry coding).

        For a codebook fitted elsewhere (one shared by several layers), so that ``iw`` still codes by importance.
        """
        rows, n, g = x.shape
        if g % self.dim:
            return None
        target, w = self._split(x)[0], self._split(weight)[0]
        labels = torch.zeros(target.shape[:2], dtype=torch.int64)
        for i, book in enumerate(self._books(params)):
            book = book.expand(target.shape[0], -1, -1)
            stage = _weighted_assign(target, w, book)
            labels |= stage << (i * self.entry_bits)
            target = target - book.gather(1, stage.unsqueeze(-1).expand(-1, -1, self.dim))
        return self._to_sub(labels, self.dim).reshape(rows, n, g)

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        helper = params.get("_codes")
        if helper is not None and helper.shape == x.shape:
            return helper
        rows, n, g = x.shape
        books = self._books(params)
        vecs, tail = self._split(x)
        codes = torch.zeros(vecs.shape[:2], dtype=torch.int64)
        target = vecs
        for i, book in enumerate(books):  # greedy: each stage codes what the previous ones left
            stage = assign(target, book)[0]
            codes |= stage << (i * self.entry_bits)
            target = target - book.gather(1, stage.unsqueeze(-1).expand(-1, -1, self.dim))
        parts = [self._to_sub(codes, self.dim)]
        r = tail.shape[1]
        if r:
            # The short vector's r sub-codes address the first 2**(r * bits) codes: pick the nearest on r values.
            cand = torch.arange(1 << (r * self.bits)).expand(rows * n, -1)
            values = self._vectors(cand, books)[..., :r]  # (b, candidates, r)
            best = assign(tail.unsqueeze(1), values)[0]  # (b, 1)
            parts.append(self._to_sub(best, r))
        return torch.cat(parts, dim=1).reshape(rows, n, g)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        rows, n, g = codes.shape
        books = self._books(params)
        full = (g // self.dim) * self.dim
        flat = codes.reshape(rows * n, g)
        parts = [self._vectors(self._from_sub(flat[:, :full], self.dim), books).flatten(1)]
        r = g - full
        if r:
            parts.append(self._vectors(self._from_sub(flat[:, full:], r), books)[:, 0, :r])
        return torch.cat(parts, dim=1).reshape(rows, n, g)

    def levels(self, params: Params, scheme: QScheme) -> torch.Tensor:
        """Every value a coordinate can take, ``(rows, n, k**stages * d)`` (at most 65,536 codes)."""
        if self.entries**self.stages > 1 << 16:
            raise UnsupportedError(f"{self.name} has {self.entries**self.stages} codes; too many to list.")
        rows, n = params["codebook"].shape[:2]
        cand = torch.arange(self.entries**self.stages).expand(rows * n, -1)
        return self._vectors(cand, self._books(params)).reshape(rows, n, -1)

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        books = [params[name].float() for name in self._names()]
        lo = sum(b.amin(dim=(-2, -1)) for b in books)
        hi = sum(b.amax(dim=(-2, -1)) for b in books)
        assert isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor)
        return lo.unsqueeze(-1), hi.unsqueeze(-1)

    def inside(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        # A codebook has no clipping threshold per value: the straight-through gradient passes everywhere.
        return torch.ones_like(x, dtype=torch.bool)


@register_family(
    r"vq([0-9])x([0-9]{1,9})(?:r([0-9]))?",
    ("vq2x16", "vq4x256", "vq2x64", "vq4x16r2"),
    "vectors of d = 2, 4, 8 values, k-entry k-means codebook (r2: two residual stages); log2(k)/d bits a value",
)
def _vector(match: re.Match[str]) -> Format:
    return VectorFormat(int(match.group(1)), int(match.group(2)), int(match.group(3) or 1))
