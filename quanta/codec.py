"""Tensor-level quantization: ``quantize_tensor``, ``dequantize`` and ``fake_quantize`` (straight-through).

These glue the pieces together: validate the input, view it as groups (:mod:`quanta.primitives.groups`), let the
scheme's format fit parameters and encode, then pack (:class:`QTensor`) or decode on the spot (fake quant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

from quanta.errors import InvalidTensorError
from quanta.formats.base import Params
from quanta.primitives.checks import cast_back, check_float_tensor, normalize_axis
from quanta.primitives.groups import Grouping
from quanta.primitives.packing import pack
from quanta.primitives.ste import straight_through
from quanta.scheme import QScheme
from quanta.tensor import QTensor, grouping_for, restore_2d, view_2d

__all__ = ["dequantize", "fake_quantize", "quantize_tensor", "shared_params"]

# The parameters a ``shared`` scheme codes onto instead of fitting its own (set by quanta.quantize per layer).
_SHARED: ContextVar[Params | None] = ContextVar("quanta_shared_params", default=None)


@contextlib.contextmanager
def shared_params(params: Params) -> Iterator[None]:
    """While active, tensors quantized with a ``shared`` scheme use ``params`` instead of fitting their own.

    The tensors are taken by reference, so every QTensor made in the block holds the *same* codebook tensor:
    ``quanta.model_nbytes`` and ``quanta.save`` count and store it once. ``quanta.quantize`` fits the shared
    parameters over all the layers of a recipe rule and enters this for each of them.

    Example:
        >>> ws = [torch.randn(16, 32), torch.randn(8, 32)]
        >>> book = quantize_tensor(torch.cat([w.reshape(-1) for w in ws]), "vq2x16:tensor:shared").params
        >>> with shared_params(book):
        ...     qts = [quantize_tensor(w, "vq2x16:tensor:shared") for w in ws]
        >>> qts[0].params["codebook"] is qts[1].params["codebook"]
        True
    """
    token = _SHARED.set(params)
    try:
        yield
    finally:
        _SHARED.reset(token)


def _fit(
    x: torch.Tensor, scheme: QScheme, axis: int | None, weight: torch.Tensor | None
) -> tuple[Params, Grouping, torch.Tensor]:
    """Validate and fit (no gradient is tracked). Returns ``(all params, grouping, x2d fp32)``."""
    check_float_tensor(x, "x")
    x = x.detach()
    if axis is not None:
        axis = normalize_axis(axis, max(x.dim(), 1))
    if weight is not None:
        check_float_tensor(weight, "weight")
        if weight.shape != x.shape:
            raise InvalidTensorError(
                f"weight has shape {tuple(weight.shape)} but x has {tuple(x.shape)}; give one importance per value."
            )
        if bool((weight < 0).any()):
            raise InvalidTensorError(
                f"weight holds {int((weight < 0).sum())} negative values; importance weights must be >= 0 "
                "(e.g. squared activations or a Hessian diagonal)."
            )
    grouping = grouping_for(x.shape, scheme, axis)
    x2d = view_2d(x, scheme, axis).float()
    w2d = None if weight is None else view_2d(weight, scheme, axis).float()
    fmt = scheme.fmt
    given = _SHARED.get() if scheme.shared else None
    if given is not None:  # a codebook fitted over several tensors: coded onto, not refitted
        params = dict(given)
        weighted = getattr(fmt, "weighted_codes", None)
        if w2d is not None and weighted is not None:  # importance still chooses the codes (per tensor: one block)
            codes = weighted(x2d.unsqueeze(1), params, w2d.unsqueeze(1))
            if codes is not None:
                params["_codes"] = codes
        return params, grouping, x2d
    params = grouping.reduce(lambda xb, wb: fmt.fit(xb, scheme, wb), x2d, w2d)
    return params, grouping, x2d


def _encode(
    x: torch.Tensor,
    scheme: QScheme,
    axis: int | None,
    weight: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, Params, Grouping, torch.Tensor]:
    """Validate, fit and encode. Returns ``(codes (rows, cols), all params, grouping, x2d fp32)``."""
    params, grouping, x2d = _fit(x, scheme, axis, weight)
    fmt = scheme.fmt
    codes = grouping.map(lambda xb, pb: fmt.encode(xb, pb, scheme, generator), x2d, params)
    return codes, params, grouping, x2d


def quantize_tensor(
    x: torch.Tensor,
    scheme: QScheme | str,
    *,
    axis: int | None = None,
    weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> QTensor:
    """Quantize a floating-point tensor into a packed :class:`QTensor`.

    Args:
        x: the tensor (any float dtype; computed in fp32).
        scheme: a :class:`QScheme` or its string form, e.g. ``"int4:g128:asym"``.
        axis: the reduction axis for ``ch``/``gN`` (``None``: dim 0 is the output channel, all other dims are
            reduced, as for Linear/Conv/Embedding weights; ``0`` for GPT-2's ``[in, out]`` Conv1D).
        weight: optional per-value importance, same shape as ``x`` (used by fitted codebooks).
        generator: random source for stochastic rounding (``None``: torch's global generator).

    Returns:
        The QTensor; ``nbytes`` is its true storage.

    Raises:
        SchemeError: the scheme is invalid.
        InvalidTensorError: ``x`` is empty, not floating point, or holds NaN/Inf (``NonFiniteError``).
        AxisError: ``axis`` is out of range.

    Example:
        >>> qt = quantize_tensor(torch.randn(64, 256), "int4:g128")
        >>> qt.nbytes, dequantize(qt).shape
        (8704, torch.Size([64, 256]))
    """
    scheme = QScheme.parse(scheme)
    codes, params, _, _ = _encode(x, scheme, axis, weight, generator)
    stored = {k: v for k, v in params.items() if not k.startswith("_")}
    packed = pack(codes, scheme.bits, scheme.fmt.signed_codes)
    axis = None if axis is None else normalize_axis(axis, max(x.dim(), 1))
    return QTensor(codes=packed, params=stored, scheme=scheme, shape=x.shape, dtype=x.dtype, axis=axis)


def dequantize(qt: QTensor) -> torch.Tensor:
    """Reconstruct a :class:`QTensor` in its original shape and dtype."""
    return qt.dequantize()


def fake_quantize(
    x: torch.Tensor,
    scheme: QScheme | str,
    *,
    axis: int | None = None,
    weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantize and dequantize in one step, with a straight-through estimator for the gradient.

    The result equals ``dequantize(quantize_tensor(x, scheme))`` (same shape and dtype as ``x``). Its gradient
    with respect to ``x`` is the incoming gradient where encoding did not clip ``x`` and zero where it did: for
    integer and fixed-point grids, torch's rule (the unclamped code ``round(x / scale) + zero`` is in range); for
    the other grids, ``x`` inside the group's smallest and largest level. Scales are treated as constants.

    Example:
        >>> w = torch.randn(8, 16, requires_grad=True)
        >>> fake_quantize(w, "int4:ch").sum().backward()
    """
    scheme = QScheme.parse(scheme)
    fmt = scheme.fmt
    with torch.no_grad():
        params, grouping, x2d = _fit(x, scheme, axis, weight)
    axis = None if axis is None else normalize_axis(axis, max(x.dim(), 1))

    # A format's fused kernel, where it has one, does everything in one differentiable pass.
    fused_ok: list[bool] = []

    def fused(xb: torch.Tensor, pb: Params) -> torch.Tensor:
        out = fmt.fused_fake_quantize(xb, pb, scheme)
        fused_ok.append(out is not None)
        return xb if out is None else out

    out2d = grouping.map(fused, view_2d(x, scheme, axis).float(), params)
    if all(fused_ok):
        return cast_back(restore_2d(out2d, x.shape, scheme, axis), x.dtype)

    with torch.no_grad():
        codes = grouping.map(lambda xb, pb: fmt.encode(xb, pb, scheme, generator), x2d, params)
        values = grouping.map(lambda c, p: fmt.decode(c, p, scheme), codes, params)
        inside = grouping.map(lambda xb, pb: fmt.inside(xb, pb, scheme).float(), x2d, params)
        xq = cast_back(restore_2d(values, x.shape, scheme, axis), x.dtype)
        mask = restore_2d(inside, x.shape, scheme, axis).to(x.dtype)
    return straight_through(x, xq, mask)
