"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"), per layer.

RTN rounds every weight to its nearest level; AdaRound learns, for each weight, whether to round down or up so
that the layer's *output* changes least. With ``c = (w - b) / a`` the continuous code of a weight under the RTN
grid (``w = a * q + b`` on that grid: scale and zero point or offset unchanged), the soft quantized weight is::

    W~ = a * clamp(floor(c) + h(V), qmin, qmax) + b,   h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)

with ``zeta = 1.1``, ``gamma = -0.1`` (the rectified sigmoid). ``V`` minimises::

    ||W x - W~ x||^2 / (rows)  +  lambda * sum(1 - |2 h(V) - 1|^beta)

where the regulariser pushes every ``h`` to 0 or 1 as ``beta`` anneals from 20 to 2 (after a warm-up without it).
The reconstruction term is ``tr((W~ - W) H (W~ - W)^T) / out`` with ``H = E[x x^T]`` over the layer's inputs
(unfolded patches for a convolution), so each step costs ``out * K^2`` whatever the amount of data, and the whole
calibration set enters every step (full-batch Adam: deterministic). The result is a QTensor of the same scheme,
scales and zero points as RTN, with codes ``floor(c) + [h(V) >= 0.5]``: packed modules, kernels and save/load
see no difference. Only integer grids (``int``/``uint``, sym/asym/fmin, any granularity) have a floor to learn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from quanta import calib as calib_module
from quanta import distributed
from quanta.codec import quantize_tensor
from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.integer import IntegerFormat
from quanta.methods.layers import check_hessian, has_matrix_view, input_vector_count, input_vectors, weight_matrix
from quanta.methods.registry import Collect, Method, Round, register_method
from quanta.primitives.packing import pack
from quanta.scheme import QScheme
from quanta.tensor import QTensor, view_2d

__all__ = ["adaround_weight", "check_scheme", "layer_hessians"]

ZETA, GAMMA = 1.1, -0.1


def check_scheme(scheme: QScheme) -> str | None:
    """Why AdaRound cannot learn the rounding of ``scheme``, or ``None`` when it can."""
    if not isinstance(scheme.fmt, IntegerFormat):
        return f"adaround learns the rounding of integer grids; {scheme} is not one (use rtn for it)"
    if scheme.rounding != "rne":
        return f"adaround replaces the rounding itself; {scheme} asks for stochastic rounding (drop ':sr')"
    return None


def layer_hessians(
    model: nn.Module,
    names: Sequence[str],
    calib: Iterable[Any],
    *,
    rows_per_step: int = 4096,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``H = E[x x^T]`` (K, K) of the input vectors of each named layer, over the calibration data, in one pass.

    A convolution sees one vector per output position (a long sequence one per token); at most ``rows_per_step``
    of them per calibration step are kept, drawn uniformly with a generator seeded by ``seed`` and the step's
    index, so the cost stays bounded on large inputs. Each step's ``sum x x^T`` is one float64 partial, and the
    partials are added along a fixed tree over the step indices (:class:`quanta.distributed.TreeSum`): inside
    :func:`quanta.distributed.across`, each rank sums its own steps and the ranks' sums are combined to the very
    bits one process would get.
    """
    steps = list(calib)
    if not steps:
        raise QuantaError("the calibration data is empty; pass at least one batch of inputs.")
    first, end, total = distributed.step_range(len(steps))
    modules = dict(model.named_modules())
    trees = {name: distributed.TreeSum(first, end, total) for name in names}
    partials: dict[str, torch.Tensor] = {}  # the current step's
    counts: dict[str, int] = dict.fromkeys(names, 0)
    generator = torch.Generator()
    handles = []
    for name in names:

        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach()
            count = input_vector_count(module, x)
            keep = None  # draw the rows before building them: only the kept patches are unfolded
            if count > rows_per_step:
                keep = torch.randperm(count, generator=generator)[:rows_per_step]
            if keep is not None and x.numel() < keep.shape[0] * weight_matrix(module).shape[1]:
                x = x.double()  # fewer values to convert before the gather than after (patches overlap)
            rows = input_vectors(module, x, keep).double()  # (rows, K), exact in float64
            if name in partials:  # a module called twice in one step
                partials[name] = partials[name] + rows.T @ rows
            else:
                partials[name] = rows.T @ rows  # (K, K)
            counts[name] += rows.shape[0]

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for index, step in enumerate(steps):
                generator.manual_seed(seed * 1_000_003 + first + index)  # the same draws on any rank
                calib_module.call_step(model, step, index)
                for name in names:
                    k = weight_matrix(modules[name]).shape[1]
                    zero = partials.pop(name, None)
                    trees[name].add(torch.zeros(k, k, dtype=torch.float64) if zero is None else zero)
    finally:
        for handle in handles:
            handle.remove()
    hessians = {}
    for name in names:
        count = distributed.combine_count(counts[name])
        total_sum = distributed.combine(trees[name].result())
        if count:
            hessians[name] = (total_sum / count).float()
    return hessians


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


@torch.no_grad()
def _optimize(
    v: torch.Tensor,
    floor: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    hessian: torch.Tensor,
    qrange: tuple[int, int],
    *,
    iters: int,
    lr: float,
    reg: float,
    warmup: float,
    beta: tuple[float, float],
) -> torch.Tensor:
    """Full-batch Adam on ``V`` (out, K) from ``v``; returns the final ``V``.

    The gradient is the loss's, in closed form (what autograd would build, without its graph)::

        dL/dW~ = (W~ - W) (H + H^T) / out
        dL/dh  = a * dL/dW~ * [qmin <= floor + h <= qmax]  -  2 lambda beta |2h - 1|^(beta - 1) sign(2h - 1)
        dL/dV  = dL/dh * (zeta - gamma) s (1 - s) * [0 <= s (zeta - gamma) + gamma <= 1],   s = sigmoid(V)

    (each clamp passes the gradient on its closed interval, as torch.clamp's backward), and Adam is
    ``torch.optim.Adam``'s single-tensor update, op for op, in place on preallocated buffers.
    """
    qmin, qmax = qrange
    out = w.shape[0]
    sym = (hessian + hessian.T) / out
    # floor + h stays in [floor, floor + 1]: inside [qmin, qmax] the outer clamp is the identity, its mask all ones.
    inside = bool(((floor >= qmin) & (floor + 1 <= qmax)).all())
    offset = b - w  # W~ - W = a * q + (b - w)
    v = v.clone()
    s, u, h, q, clamped, delta, grad, g_h, t, tmp = (torch.empty_like(v) for _ in range(10))
    exp_avg, exp_avg_sq, denom = torch.zeros_like(v), torch.zeros_like(v), torch.empty_like(v)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    start = int(warmup * iters)
    for step in range(iters):
        torch.sigmoid(v, out=s)
        torch.mul(s, ZETA - GAMMA, out=u).add_(GAMMA)
        torch.clamp(u, 0, 1, out=h)
        torch.add(floor, h, out=q)
        if not inside:
            torch.clamp(q, qmin, qmax, out=clamped)
        torch.addcmul(offset, a, q if inside else clamped, out=delta)  # W~ - W
        torch.mm(delta, sym, out=grad)  # dL/dW~
        torch.mul(grad, a, out=g_h)
        if not inside:  # the clamp is active exactly where it changed q
            g_h.masked_fill_(clamped != q, 0)
        if step >= start:
            progress = (step - start) / max(iters - start, 1)
            b_now = beta[0] + (beta[1] - beta[0]) * progress  # linear decay, as in the paper's code
            torch.mul(h, 2, out=t).sub_(1)  # 2h - 1
            torch.abs(t, out=tmp).pow_(b_now - 1)
            torch.copysign(tmp, t, out=tmp)  # sign(2h - 1) |2h - 1|^(beta - 1)
            g_h.add_(tmp, alpha=-2 * reg * b_now)
        # through the rectified sigmoid: (zeta - gamma) s (1 - s), zero where the clamp to [0, 1] is active
        torch.neg(s, out=tmp).add_(1).mul_(s).mul_(ZETA - GAMMA)
        g_h.mul_(tmp).masked_fill_(h != u, 0)  # h == u exactly where u is in [0, 1]
        # Adam (torch.optim.Adam, single tensor, no weight decay / amsgrad)
        exp_avg.lerp_(g_h, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g_h, g_h, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** (step + 1)
        bias_correction2_sqrt = (1 - beta2 ** (step + 1)) ** 0.5
        torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)
        v.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    return v


def adaround_weight(
    layer: nn.Module,
    scheme: QScheme,
    hessian: torch.Tensor,
    *,
    iters: int = 500,
    lr: float = 1e-2,
    reg: float = 0.01,
    warmup: float = 0.2,
    beta: tuple[float, float] = (20.0, 2.0),
) -> QTensor:
    """Quantize ``layer.weight`` with ``scheme`` and AdaRound-learned rounding.

    Args:
        layer: a Linear or ungrouped Conv layer.
        scheme: an integer weight scheme (any granularity, sym/asym/fmin).
        hessian: ``E[x x^T]`` (K, K) of the layer's input vectors (:func:`layer_hessians`).
        iters: Adam steps; ``lr`` its learning rate; ``reg`` the regulariser's weight ``lambda``.
        warmup: fraction of the steps without the regulariser; ``beta`` its (start, end) exponent.

    Returns:
        A QTensor with RTN's scales and zero points and learned codes.

    Raises:
        UnsupportedError: a non-integer scheme, or ``hessian`` does not match the layer.

    Example:
        >>> lin = torch.nn.Linear(16, 4)
        >>> qt = adaround_weight(lin, QScheme.parse("int4:ch"), torch.eye(16), iters=20)
        >>> qt.shape
        torch.Size([4, 16])
    """
    problem = check_scheme(scheme)
    if problem:
        raise UnsupportedError(problem + ".")
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    w = weight.detach().float()
    w_mat = weight_matrix(layer).detach().float()  # (out, K)
    check_hessian(hessian, w_mat)
    rtn = quantize_tensor(w, scheme)  # the grid: its params are kept as they are
    fmt, grouping = scheme.fmt, rtn.grouping
    qmin, qmax = fmt.qrange(scheme)  # type: ignore[attr-defined]

    def affine(xb: torch.Tensor, pb: dict[str, torch.Tensor], code: int) -> torch.Tensor:
        return fmt.decode(torch.full_like(xb, code, dtype=torch.int32), pb, scheme)

    # Per-element a and b of w = a * q + b, in the (rows, cols) layout of the scheme's groups. That layout is a
    # plain reshape of the (out, K) matrix (one row per tensor, or per output channel), so the loop below works
    # on (out, K) directly.
    x2d = view_2d(w, scheme, None)
    b2d = grouping.map(lambda xb, pb: affine(xb, pb, 0), x2d, rtn.params)
    a2d = grouping.map(lambda xb, pb: affine(xb, pb, 1), x2d, rtn.params) - b2d
    cont = (x2d - b2d) / a2d  # continuous codes
    floor = torch.floor(cont)
    rest = (cont - floor).clamp(1e-4, 1 - 1e-4)
    # h(V0) = rest: start from the unrounded weights.
    v0 = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
    out = w_mat.shape[0]
    v = _optimize(
        v0.reshape(out, -1),
        floor.reshape(out, -1),
        a2d.reshape(out, -1),
        b2d.reshape(out, -1),
        w_mat,
        hessian.float(),
        (qmin, qmax),
        iters=iters,
        lr=lr,
        reg=reg,
        warmup=warmup,
        beta=beta,
    ).reshape(x2d.shape)
    codes = torch.clamp(floor + (_h(v) >= 0.5).float(), qmin, qmax).to(torch.int32)  # (rows, cols)
    packed = pack(codes, scheme.bits, fmt.signed_codes)
    return QTensor(codes=packed, params=dict(rtn.params), scheme=scheme, shape=w.shape, dtype=weight.dtype)


def hessian_rounding(
    method: str, weight_fn: Callable[[nn.Module, QScheme, torch.Tensor], QTensor]
) -> tuple[Collect, Round]:
    """The ``collect`` and ``round`` steps of a rounding method driven by ``H = E[x x^T]`` (AdaRound, GPTQ).

    ``collect`` gathers every matrix-view layer's ``H`` in one pass over the float model; ``round`` calls
    ``weight_fn(layer, scheme, H)``, or rounds to nearest (with a warning) for a layer without statistics (no
    matrix view, or never reached by the data).
    """

    def collect(model: nn.Module, names: Sequence[str], calib: list[Any]) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        return layer_hessians(model, [n for n in names if has_matrix_view(modules[n])], calib)

    def round_weight(name: str, layer: nn.Module, scheme: QScheme, hessians: dict[str, torch.Tensor]) -> QTensor:
        if name not in hessians:
            warnings.warn(f"{method}: no input statistics for {name}; its weight is rounded to nearest.", stacklevel=2)
            weight = layer.weight
            assert isinstance(weight, torch.Tensor)
            return quantize_tensor(weight.detach(), scheme)
        return weight_fn(layer, scheme, hessians[name])

    return collect, round_weight


_collect, _round = hessian_rounding("adaround", lambda layer, scheme, h: adaround_weight(layer, scheme, h))


register_method(
    Method(
        "adaround",
        "rounding",
        "AdaRound: per-layer learned rounding on calibration data (integer weight grids)",
        needs_data=True,
        collect=_collect,
        round=_round,
        check=check_scheme,
    )
)
