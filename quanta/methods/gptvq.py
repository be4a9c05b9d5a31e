"""GPTVQ (van Baalen et al. 2024, "GPTVQ: The Blessing of Dimensionality for LLM Quantization").

GPTQ's error feedback with vector codebooks instead of scalar grids. A ``vq{d}x{k}`` weight is cut into vectors of
``d`` consecutive input columns; GPTVQ takes those ``d`` columns together, picks each row's codebook entry, and
spreads the block's error over the columns not yet quantized. With ``H = E[x x^T]`` (K, K) and ``U`` the upper
Cholesky factor of ``H^-1`` (``H^-1 = U^T U``, so the remaining columns' ``H^-1`` is ``U[b:, b:]^T U[b:, b:]``),
for the block ``b`` of ``d`` columns the optimal-brain-quantization step reads::

    A      = U[b, b]^-1                          # (d, d), upper triangular
    q      = argmin_c |(w_b - c) A|^2            # per row: nearest entry after the whitening A
    e      = (w_b - q) A                         # (out, d)
    W[:, rest] -= e U[b, rest]                   # error feedback (lazily, once per 128 columns)

The distance ``|(w_b - c) A|^2 = (w_b - c) [H^-1]_bb^-1 (w_b - c)^T`` is the increase of the layer's output error
when block ``b`` is fixed to ``c`` and the later columns compensate. With ``r2`` the two residual stages are chosen
greedily in the whitened space.

The codebook is fitted once, before the pass, by the input-weighted k-means of ``iw`` (importance ``diag(H)``)
on the float weights; then, after the pass, its entries are refitted to the chosen codes by least squares on the
layer's output error ``tr((W - Q) H (W - Q)^T)`` (conjugate gradient, a convex quadratic in the entries: the
"codebook update" of the paper). Every shape and layout is the format's own: the result is a QTensor of the same
``vq`` scheme that RTN or ``iw`` would give, so kernels and save/load see no difference.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quanta.errors import UnsupportedError
from quanta.formats.vector import VectorFormat
from quanta.methods.adaround import hessian_rounding
from quanta.methods.gptq import _inverse_cholesky
from quanta.methods.iw import iw_weight
from quanta.methods.layers import check_hessian, weight_matrix
from quanta.methods.registry import Method, register_method
from quanta.primitives.affine import storage_param
from quanta.primitives.packing import pack
from quanta.scheme import QScheme
from quanta.tensor import QTensor, grouping_for

__all__ = ["check_scheme", "gptvq_weight"]

logger = logging.getLogger(__name__)

CG_STEPS = 25
"""Conjugate-gradient steps of the codebook refit (the quadratic has k * d unknowns; 25 steps reach its floor on
stories260K's layers, the loss changing by under 0.1% after)."""


def check_scheme(scheme: QScheme) -> str | None:
    """Why GPTVQ cannot quantize with ``scheme``, or ``None`` when it can."""
    if not isinstance(scheme.fmt, VectorFormat):
        return f"gptvq codes vectors with a codebook; {scheme} is not a vq{{d}}x{{k}} format (use gptq for it)"
    if scheme.granularity not in ("tensor", "rows"):
        return (
            f"gptvq fits one codebook per layer or per group of rows; {scheme} asks for {scheme.granularity} "
            "codebooks (use tensor or rowsN)"
        )
    return None


def _nearest(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index ``(G, R)`` of the nearest row of ``book`` (G, k, d) for each row of ``x`` (G, R, d), group by group."""
    d2 = (book * book).sum(2).unsqueeze(1) - 2.0 * torch.bmm(x, book.transpose(1, 2))  # |x|^2 leaves argmin alone
    return d2.argmin(dim=2)


def _refit_books(
    w: torch.Tensor, hessian: torch.Tensor, labels: list[torch.Tensor], books: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Codebooks minimising ``tr((W - Q) H (W - Q)^T)`` for fixed ``labels`` (one ``(out, K / d)`` per stage).

    ``books`` are ``(G, k, d)`` per stage (``G`` groups of rows, one for a per-layer codebook). ``Q`` is linear in
    the entries, so the loss is a convex quadratic: conjugate gradient from the current books, in float64. Entries
    no vector uses keep their value (their gradient is zero).
    """
    out, cols = w.shape
    groups, k, d = books[0].shape
    h = hessian.double()
    theta = torch.cat([b.double().reshape(-1, d) for b in books])  # (stages * G * k, d)
    row_offset = (torch.arange(out) // (out // groups) * k).unsqueeze(1)  # each row's codebook, (out, 1)
    flat = [(lab + row_offset + i * groups * k).reshape(-1) for i, lab in enumerate(labels)]

    def grad(t: torch.Tensor) -> torch.Tensor:
        # dL/dQ = -2 (W - Q) H; an entry's gradient sums it over the vectors coded with that entry.
        q = sum(t[idx] for idx in flat)
        assert isinstance(q, torch.Tensor)
        dq = (-2.0 * (w.double() - q.reshape(out, cols)) @ h).reshape(-1, d)
        g = torch.zeros_like(t)
        for idx in flat:
            g.index_add_(0, idx, dq)
        return g

    # The quadratic's Hessian-vector product is linear: A v = grad(theta + v) - grad(theta); b = -grad(theta).
    g0 = grad(theta)
    x = torch.zeros_like(g0)
    r = -g0
    p = r.clone()
    rs = float((r * r).sum())
    for _ in range(CG_STEPS):
        if rs <= 1e-30:
            break
        ap = grad(theta + p) - g0
        pap = float((p * ap).sum())
        if pap <= 0:
            break
        alpha = rs / pap
        x += alpha * p
        r -= alpha * ap
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new
    new = (theta + x).detach().float()
    size = groups * k
    return [new[i * size : (i + 1) * size].reshape(groups, k, d) for i in range(len(books))]


@torch.no_grad()
def gptvq_weight(
    layer: nn.Module,
    scheme: QScheme,
    hessian: torch.Tensor,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    refit: bool = True,
) -> QTensor:
    """Quantize ``layer.weight`` with a ``vq{d}x{k}[r2]`` scheme by GPTVQ.

    Args:
        layer: a Linear or ungrouped Conv layer whose input width ``K`` is a multiple of ``d``.
        scheme: a vector codebook scheme, per tensor or per group of rows (``vq2x64``, ``vq4x256:tensor:sf16``,
            ``vq4x16r2``, ``vq4x256:rows64:sf16``).
        hessian: ``E[x x^T]`` (K, K) of the layer's input vectors (any positive multiple).
        block_size: columns per lazy error update (rounded down to a multiple of ``d``).
        damp: damping, as a fraction of the mean of ``diag(H)``.
        refit: refit the codebook entries to the chosen codes by least squares on the output error (not for a
            ``shared`` scheme, whose codebook belongs to several layers).

    Returns:
        A QTensor of ``scheme`` with GPTVQ's codes and codebook(s).

    Raises:
        UnsupportedError: a scheme that is not a per-tensor vq one, ``K`` not a multiple of ``d``, or ``hessian``
            not ``(K, K)``.

    Example:
        >>> lin = torch.nn.Linear(64, 32)
        >>> gptvq_weight(lin, QScheme.parse("vq2x16"), torch.eye(64)).shape
        torch.Size([32, 64])
    """
    problem = check_scheme(scheme)
    if problem:
        raise UnsupportedError(problem + ".")
    fmt = scheme.fmt
    assert isinstance(fmt, VectorFormat)
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    w_float = weight_matrix(layer).detach().float()  # (out, K)
    out, cols = w_float.shape
    d, k = fmt.dim, fmt.entries
    if cols % d:
        raise UnsupportedError(f"gptvq needs the input width ({cols}) to be a multiple of d={d}; use iw or rtn.")
    check_hessian(hessian, w_float)
    # The initial codebook: iw's input-weighted k-means on the float weights.
    start = iw_weight(layer, scheme, hessian.detach())
    names = ["codebook"] if fmt.stages == 1 else ["codebook", "codebook2"]
    books = [start.params[n].float().reshape(-1, k, d) for n in names]  # (G, k, d): G groups of rows
    groups = books[0].shape[0]
    row_group = torch.arange(out) // (out // groups)  # (out,) each row's codebook

    w = w_float.clone()
    dead = hessian.detach().diagonal() == 0
    w[:, dead] = 0.0
    u = _inverse_cholesky(hessian, damp, None).float()  # (K, K)
    block = max(d, block_size - block_size % d)
    labels = [torch.zeros(out, cols // d, dtype=torch.int64) for _ in books]
    for s in range(0, cols, block):
        end = min(s + block, cols)
        w1 = w[:, s:end].clone()  # (out, B)
        err = torch.zeros_like(w1)  # (out, B), whitened errors
        for i in range(0, end - s, d):
            j = s + i
            a = torch.linalg.inv(u[j : j + d, j : j + d])  # (d, d) upper triangular: the whitening
            target = w1[:, i : i + d] @ a  # (out, d)
            q = torch.zeros(out, d)
            for stage, book in enumerate(books):  # greedy residual stages in the whitened space
                lab = _nearest(target.reshape(groups, -1, d), book @ a).reshape(out)
                labels[stage][:, j // d] = lab
                q += book[row_group, lab]
                target = (w1[:, i : i + d] - q) @ a
            e = target  # (w_b - q) A
            w1[:, i + d :] -= e @ u[j : j + d, j + d : end]
            err[:, i : i + d] = e
        w[:, end:] -= err @ u[s:end, end:]
    if scheme.shared:  # the codebook is the one its rule's layers share: kept as it is (the same tensors)
        params = dict(start.params)
    else:
        if refit:
            books = _refit_books(w_float, hessian.detach(), labels, books)
        dtype = start.params["codebook"].dtype
        params = {
            n: storage_param(b, dtype, "codebook entry").to(dtype).reshape(groups, 1, k, d)
            for n, b in zip(names, books, strict=True)
        }
    vector_codes = sum(lab << (i * fmt.entry_bits) for i, lab in enumerate(labels))
    assert isinstance(vector_codes, torch.Tensor)
    sub = fmt._to_sub(vector_codes, d)  # (out, K) sub-codes, the format's layout
    grouping = grouping_for(weight.shape, scheme, None)
    packed = pack(sub.reshape(grouping.rows, grouping.cols), scheme.bits, fmt.signed_codes)
    logger.debug("gptvq: %s quantized (%d columns, %s)", type(layer).__name__, cols, scheme)
    return QTensor(codes=packed, params=params, scheme=scheme, shape=weight.shape, dtype=weight.dtype)


_collect, _round = hessian_rounding("gptvq", gptvq_weight)

register_method(
    Method(
        "gptvq",
        "rounding",
        "GPTVQ: vector codebook codes chosen block by block with GPTQ's Hessian error feedback, codebook refit "
        "on the output error (vq formats)",
        needs_data=True,
        collect=_collect,
        round=_round,
        check=check_scheme,
    )
)
