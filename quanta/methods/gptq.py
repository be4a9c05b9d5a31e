"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

RTN rounds each weight on its own; GPTQ quantizes the ``(out, K)`` weight matrix one input column at a time and
spreads each column's rounding error over the columns not yet quantized, so that the layer's *output*
``W x`` changes least over the calibration inputs (Optimal Brain Quantization, one column for all rows at once).
With ``H = 2 E[x x^T]`` (K, K) and ``U`` the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), column ``j``::

    q_j  = quant(w_j)                          # on the group's grid
    e_j  = (w_j - q_j) / U[j, j]               # (out,)
    W[:, j+1:] -= e_j U[j, j+1:]               # error feedback

applied lazily in blocks of 128 columns (within a block column by column, to the rest of the matrix once per
block: one matmul). Details as in the reference implementation:

* damping: ``H += 1% * mean(diag H) * I``; if the Cholesky factorisation still fails the damping grows tenfold
  (up to four times), with a warning, so a singular Hessian never crashes;
* dead columns (``H[j, j] == 0``: an input that is always zero) get ``H[j, j] = 1`` and weight 0, which changes
  no output;
* grids: a per-tensor or per-channel grid is fitted once on the float weights; a per-group grid is fitted on the
  *current* (error-updated) weights of its columns when its first column is reached, so the grid follows the
  weights GPTQ actually rounds. With ``grid_search`` (on for the registered ``gptq`` method) each grid's range is
  shrunk by the factor in 1.0 .. 0.8 with the least ``sum |w - q(w)|^2.4`` per row (the reference's ``mse``);
* act-order (``desc_act``): columns are processed by decreasing ``diag(H)``. Codes are stored in the original
  column order (the scheme's packed layout is unchanged), so each group must keep one grid over its contiguous
  original columns: with act-order, per-group grids are fitted once on the float weights before any update
  ("static groups" in the reference). ``static_groups=True`` asks for that without act-order.

The result is a QTensor of the *same scheme* as RTN's (packed codes, its own scales and zero points): packed
modules, kernels (the int4 one included) and save/load see no difference. Statistics are gathered on the float
model for every layer in one pass; feeding each block the outputs of already-quantized blocks (GPTQ's sequential
scheme for language models) is left to the language-model pipeline.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from quanta.errors import UnsupportedError
from quanta.formats.base import Params
from quanta.formats.integer import IntegerFormat
from quanta.methods.adaround import hessian_rounding
from quanta.methods.layers import check_hessian, weight_matrix
from quanta.methods.registry import Method, register_method
from quanta.primitives.packing import pack
from quanta.scheme import QScheme
from quanta.tensor import QTensor, grouping_for

__all__ = ["check_scheme", "gptq_weight"]

logger = logging.getLogger(__name__)

DAMP_GROWTH, DAMP_TRIES = 10.0, 4


def check_scheme(scheme: QScheme) -> str | None:
    """Why GPTQ cannot quantize with ``scheme``, or ``None`` when it can."""
    if not isinstance(scheme.fmt, IntegerFormat):
        return f"gptq rounds onto integer grids; {scheme} is not one (use rtn for it)"
    if scheme.rounding != "rne":
        return f"gptq chooses the rounding itself; {scheme} asks for stochastic rounding (drop ':sr')"
    return None


def _inverse_cholesky(
    hessian: torch.Tensor, damp: float, perm: torch.Tensor | None, first_attempt: int = 0
) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` in float64, damping more if needed.

    ``H`` is ``hessian`` in float64, dead inputs (zero diagonal) set to 1 on the diagonal, permuted by ``perm``
    (act-order). Memory decides the order of work here: a 11008-wide down projection's ``K x K`` float64 matrix is
    0.97 GB, so the working copy is damped in place and every matrix is dropped as soon as the next one exists (at
    most two alive, plus LAPACK's workspace).
    """
    h = hessian.detach().to(torch.float64, copy=True)  # one copy (.double().clone() makes two)
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    if perm is not None:
        h = h[perm][:, perm]
    mean_diag = float(h.diagonal().mean())
    applied, attempt, factor = 0.0, first_attempt, damp
    lower: torch.Tensor | None = None
    for attempt in range(first_attempt, DAMP_TRIES + 1):
        factor = damp * DAMP_GROWTH**attempt
        h.diagonal().add_((factor - applied) * mean_diag)
        applied = factor
        candidate, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            lower = candidate
            break
        del candidate
    if lower is None:
        raise UnsupportedError(
            f"gptq: the Hessian stays singular with damping {factor:g}; use more calibration data or rtn for this "
            "layer."
        )
    del h
    inverse = torch.cholesky_inverse(lower)
    del lower
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    del inverse
    if int(info) != 0:  # the inverse lost definiteness in rounding: start over with more damping
        return _inverse_cholesky(hessian, damp, perm, attempt + 1)
    if attempt:
        warnings.warn(f"gptq: the Hessian is near singular; damping raised from {damp:g} to {factor:g}.", stacklevel=3)
    return upper


SHRINK = tuple(1.0 - 0.01 * k for k in range(21))  # range factors tried by the error-minimising grid
NORM = 2.4  # the reference implementation's error norm for that search


def _error_minimising_params(blocks: torch.Tensor, scheme: QScheme) -> Params:
    """Per group of ``blocks`` (rows, groups, size): the grid fitted on the range shrunk by the factor in
    :data:`SHRINK` with the least ``sum |x - q(x)|^NORM``, as the format's ``(rows, groups)`` parameters."""
    fmt = scheme.fmt
    lo, hi = blocks.amin(dim=-1, keepdim=True), blocks.amax(dim=-1, keepdim=True)
    best: Params | None = None
    best_err = torch.full(blocks.shape[:-1], float("inf"))
    for factor in SHRINK:
        # The range's ends scaled by the factor: the fit sees exactly that min and max (x clamped into them).
        with warnings.catch_warnings():
            if factor != 1.0:  # the full range's fit warns about tiny steps once; shrunk ones would repeat it
                warnings.simplefilter("ignore", UserWarning)
            params = fmt.fit(torch.maximum(torch.minimum(blocks, hi * factor), lo * factor), scheme, None)
        err = (fmt.decode(fmt.encode(blocks, params, scheme, None), params, scheme) - blocks).abs().pow(NORM)
        err = err.sum(dim=-1)  # (rows, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        if best is None:
            best = params
        else:
            best = {
                k: torch.where(better.reshape(*better.shape, *([1] * (v.dim() - 2))), params[k], v)
                for k, v in best.items()
            }
    assert best is not None
    return best


def _error_minimising_grid(x: torch.Tensor, scheme: QScheme) -> Params:
    """:func:`_error_minimising_params` for one group per row of ``x`` (rows, cols): ``(rows, 1)`` parameters."""
    return _error_minimising_params(x.unsqueeze(1), scheme)


def _slice(params: Params, rows: int, group: int) -> Params:
    """The parameters of one group column, ``(rows, 1)`` each (a per-tensor grid is broadcast to every row)."""
    return {k: v[:, group : group + 1].expand(rows, 1) for k, v in params.items()}


@torch.no_grad()
def gptq_weight(
    layer: nn.Module,
    scheme: QScheme,
    hessian: torch.Tensor,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    desc_act: bool = False,
    static_groups: bool = False,
    grid_search: bool = False,
) -> QTensor:
    """Quantize ``layer.weight`` with ``scheme`` by GPTQ.

    Args:
        layer: a Linear or ungrouped Conv layer.
        scheme: an integer weight scheme (any bits, granularity, sym/asym/fmin).
        hessian: ``E[x x^T]`` (K, K) of the layer's input vectors (:func:`~quanta.methods.layer_hessians`); any
            positive multiple gives the same result, so ``H = 2 E[x x^T]`` needs no factor.
        block_size: columns per lazy batch update.
        damp: damping, as a fraction of the mean of ``diag(H)``.
        desc_act: process columns by decreasing ``diag(H)`` (act-order); per-group grids are then static.
        static_groups: fit per-group grids on the float weights before any update.
        grid_search: fit each grid by shrinking its range (1.0, 0.99, ..., 0.8 of min/max) to the factor with the
            least ``sum |w - q(w)|^2.4`` per row (the reference implementation's ``mse`` option), instead of
            min/max.

    Returns:
        A QTensor of ``scheme`` (same layout as RTN's) with GPTQ's codes and grids.

    Raises:
        UnsupportedError: a non-integer or stochastic scheme, or ``hessian`` does not match the layer.

    Example:
        >>> lin = torch.nn.Linear(64, 8)
        >>> qt = gptq_weight(lin, QScheme.parse("int4:g32:asym"), torch.eye(64))
        >>> qt.shape
        torch.Size([8, 64])
    """
    problem = check_scheme(scheme)
    if problem:
        raise UnsupportedError(problem + ".")
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    w_float = weight_matrix(layer).detach().float()  # (out, K)
    out, cols = w_float.shape
    check_hessian(hessian, w_float)
    fmt = scheme.fmt
    grouping = grouping_for(weight.shape, scheme, None)
    per_group = scheme.granularity == "group"
    size = min(int(scheme.group_size or cols), cols) if per_group else cols

    w = w_float.clone()
    diagonal = hessian.detach().diagonal().double()
    dead = diagonal == 0
    w[:, dead] = 0.0
    diagonal[dead] = 1.0
    perm = torch.argsort(diagonal, descending=True, stable=True) if desc_act else torch.arange(cols)
    u = _inverse_cholesky(hessian, damp, perm if desc_act else None).float()  # (K, K), in processing order

    def fit(x: torch.Tensor) -> Params:  # x (rows, cols) -> params (rows, 1)
        if grid_search:
            return _error_minimising_grid(x, scheme)
        return fmt.fit(x.unsqueeze(1), scheme, None)

    # Grids fitted up front: per-tensor and per-channel ones always, per-group ones when static.
    if scheme.granularity == "tensor":
        params = fit(w.reshape(1, -1))
    elif not per_group:
        params = fit(w)
    elif static_groups or desc_act:
        params = grouping.reduce(
            lambda xb: _error_minimising_params(xb, scheme) if grid_search else fmt.fit(xb, scheme, None), w
        )
    else:
        params = {}
    parts: list[Params] = []  # per-group grids fitted on the go, in group order
    codes = torch.zeros(out, cols, dtype=torch.int32)

    w = w[:, perm]  # processing order
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1 = w[:, start:end].clone()  # (out, B)
        err = torch.zeros_like(w1)  # (out, B), scaled errors e_j
        for i in range(end - start):
            j = start + i
            col = int(perm[j])  # original column index
            group = col // size if per_group else 0
            if per_group and not params and col % size == 0:
                # The group's columns as they are now: this block's updated columns, later ones with the
                # block's pending error feedback applied (static orders only: perm is the identity here).
                stop = min(col + size, cols)
                current = w1[:, i : min(stop, end) - start]
                if stop > end:
                    pending = w[:, end:stop] - err[:, :i] @ u[start : start + i, end:stop]
                    current = torch.cat([current, pending], dim=1)
                parts.append(fit(current))
            p = _slice(params, out, group) if params else {k: v[:, -1:] for k, v in parts[-1].items()}
            x = w1[:, i].reshape(out, 1, 1)
            q = fmt.encode(x, p, scheme, None)  # (out, 1, 1)
            codes[:, col] = q.reshape(out)
            e = (w1[:, i] - fmt.decode(q, p, scheme).reshape(out)) / u[j, j]
            w1[:, i:] -= e.unsqueeze(1) * u[j, start:end][i:].unsqueeze(0)
            err[:, i] = e
        w[:, end:] -= err @ u[start:end, end:]
    if not params:
        params = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
    logger.debug("gptq: %s quantized (%d columns, %s)", type(layer).__name__, cols, scheme)
    packed = pack(codes.reshape(grouping.rows, grouping.cols), scheme.bits, fmt.signed_codes)
    return QTensor(codes=packed, params=params, scheme=scheme, shape=weight.shape, dtype=weight.dtype)


# The registered method fits each grid by the error-minimising range search (stories260K: 44% of RTN's perplexity
# increase removed at W4 g32 and W3 g16, against 33% and 30% with min/max grids).
_collect, _round = hessian_rounding("gptq", lambda layer, scheme, h: gptq_weight(layer, scheme, h, grid_search=True))


register_method(
    Method(
        "gptq",
        "rounding",
        "GPTQ: column-by-column rounding with Hessian error feedback on calibration data (integer weight grids)",
        needs_data=True,
        collect=_collect,
        round=_round,
        check=check_scheme,
        fits_grid=True,
    )
)

# Act-order as its own name, so that a recipe (and every preset: w4a16-g128-gptqact, w4a16-g32-awq_gptqact) can ask
# for it: columns by decreasing diag(H), groups' grids fitted before the columns move (static groups).
_collect_act, _round_act = hessian_rounding(
    "gptqact", lambda layer, scheme, h: gptq_weight(layer, scheme, h, grid_search=True, desc_act=True)
)

register_method(
    Method(
        "gptqact",
        "rounding",
        "GPTQ with act-order: columns processed by decreasing input energy diag(H), static group grids",
        needs_data=True,
        collect=_collect_act,
        round=_round_act,
        check=check_scheme,
        fits_grid=True,
    )
)
