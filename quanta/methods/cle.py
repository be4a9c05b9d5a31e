"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For two consecutive layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positively homogeneous (``f(s z) = s f(z)``
for ``s > 0``: ReLU, LeakyReLU, max/average pooling, identity), rescaling channel ``i`` between them leaves the
function unchanged::

    W1' = S^-1 W1,  b1' = S^-1 b1,  W2' = W2 S,  S = diag(s)

The paper picks ``s_i = sqrt(r1_i / r2_i)``, with ``r1_i`` the range (max |w|) of output channel ``i`` of ``W1``
and ``r2_i`` the range of input channel ``i`` of ``W2``: afterwards both equal ``sqrt(r1_i r2_i)``, which
maximises the summed relative precision of the two layers under per-tensor quantization. A layer in the middle
of a chain belongs to two pairs, so the pairs are equalized in turn until the scales stop moving.

Pairs come from the module tree, as BatchNorm folding finds its pairs: a Conv/Linear registered in the same
parent right after another one (only positively homogeneous modules between them) whose input channels equal
the first one's output channels. A flatten between a conv (C channels) and a Linear (C * m inputs) is a
reshape: channel ``c`` feeds the column block ``c*m .. (c+1)*m - 1``, and that block is ``W2``'s input channel.
With ``example_inputs``, pairs registered in different parents (LeNet-5's ``convnet.c5 -> fc.f6``, flattened
in ``forward``) are found from the order forward hooks see the layers called, each confirmed by rescaling it
on the example (a residual add or a sigmoid between changes the output). Activations called functionally in
``forward`` are invisible to the module-tree search, so the output is also checked after equalizing and a wrong
pairing is undone with an error. BatchNorm must be folded first (:func:`quanta.methods.fold_batchnorm`): it is
affine, not homogeneous.

High-bias absorption (the paper's section 4.1.2) is not implemented: it only narrows activation ranges, and on
the models measured here (docs/recipes.md) activation quantization is a negligible part of the W4A8 error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.methods.layers import input_channels, output_channels
from quanta.methods.registry import Method, register_method

__all__ = ["Equalized", "equalize", "find_pairs"]

_FIRST = (nn.Conv1d, nn.Conv2d, nn.Linear)
_HOMOGENEOUS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,  # a reshape: channel c becomes the column block c*m .. (c+1)*m - 1 of the next Linear
)
_CONV = (nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class Equalized:
    """One equalized pair. ``scale`` (out channels of ``first``) is the total ``s``: ``first``'s outputs were
    divided by it and ``second``'s input weights multiplied by it."""

    first: str
    second: str
    scale: torch.Tensor


def _can_follow(a: nn.Module, b: nn.Module, flattened: bool) -> bool:
    """Whether output channel ``i`` of ``a`` is input channel ``i`` of ``b`` (a column block when flattened)."""
    if not isinstance(b, _FIRST):
        return False
    # The second layer's input channel i must be one column block of its weight: no groups.
    if isinstance(b, _CONV) and b.groups != 1:
        return False
    channels, inputs = output_channels(a), input_channels(b)
    if isinstance(a, _CONV) and isinstance(b, nn.Linear):
        # Conv (n, C, *spatial) -> flatten -> Linear (n, C * m): channel c feeds columns c*m .. (c+1)*m - 1.
        return flattened and inputs % channels == 0
    return inputs == channels


def _block(first: nn.Module, second: nn.Module) -> int:
    """Input columns of ``second`` per output channel of ``first``: the spatial size flattened between, else 1."""
    return input_channels(second) // output_channels(first)


def _tree_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs registered one after the other in the same parent, only homogeneous modules between."""
    pairs: list[tuple[str, str]] = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        for i, (name_a, a) in enumerate(children):
            if not isinstance(a, _FIRST):
                continue
            flattened = False
            for name_b, b in children[i + 1 :]:
                if isinstance(b, _HOMOGENEOUS) and not isinstance(b, _FIRST):
                    flattened |= isinstance(b, nn.Flatten)
                    continue
                if _can_follow(a, b, flattened):
                    pairs.append((prefix + name_a, prefix + name_b))
                break
    return pairs


def _call_order(model: nn.Module, args: tuple[Any, ...]) -> list[str]:
    """Names of the leaf modules in the order one forward pass calls them (hooks, no graph tracing)."""
    calls: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name))
        for name, m in model.named_modules()
        if not any(True for _ in m.children())
    ]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _same_output(model: nn.Module, args: tuple[Any, ...], before: torch.Tensor, atol: float) -> bool:
    with torch.no_grad():
        after = model(*args)
    return bool(torch.allclose(after, before, atol=atol * float(before.abs().max()), rtol=0))


def _traced_pairs(
    model: nn.Module, args: tuple[Any, ...], known: list[tuple[str, str]], atol: float
) -> list[tuple[str, str]]:
    """Pairs consecutive in call order across parents (e.g. ``features.conv -> flatten in forward -> fc.linear``).

    A functional op between two calls (a residual add, a sigmoid) is invisible to hooks, so each candidate is
    confirmed on the example input: rescaled by a test ``s`` the model's output must not change.
    """
    calls = _call_order(model, args)
    modules = dict(model.named_modules())
    reused = {n for n in calls if calls.count(n) > 1}  # a layer called twice cannot be rescaled for one consumer
    firsts, seconds = {a for a, _ in known}, {b for _, b in known}
    with torch.no_grad():
        before = model(*args)
    found: list[tuple[str, str]] = []
    for i, name_a in enumerate(calls):
        a = modules[name_a]
        if not isinstance(a, _FIRST) or name_a in reused or name_a in firsts:
            continue
        flattened = isinstance(a, _CONV)  # a Linear after a conv in call order means a (functional) flatten
        for name_b in calls[i + 1 :]:
            b = modules[name_b]
            if isinstance(b, _HOMOGENEOUS) and not isinstance(b, _FIRST):
                continue
            if name_b in reused or name_b in seconds or not _can_follow(a, b, flattened):
                break
            saved = {n: {k: v.clone() for k, v in modules[n].state_dict().items()} for n in (name_a, name_b)}
            test = 2.0 ** torch.linspace(-1.0, 1.0, output_channels(a), dtype=torch.float64)  # channels x1/2 .. x2
            _rescale(a, b, test)
            if _same_output(model, args, before, atol):
                found.append((name_a, name_b))
            for name, state in saved.items():
                modules[name].load_state_dict(state)
            break
    return found


def find_pairs(
    model: nn.Module, names: set[str] | None = None, example_inputs: Any = None, *, atol: float = 1e-4
) -> list[tuple[str, str]]:
    """Consecutive weight-layer pairs with only positively homogeneous modules between them (see module doc).

    Args:
        model: the model.
        names: if given, only pairs whose two layers are both in ``names``.
        example_inputs: optional input (tensor or tuple); with it, pairs that are consecutive in call order but
            registered in different parents are found too, each confirmed on this input.
        atol: tolerance of that confirmation, relative to the output's largest magnitude.

    Returns:
        ``[(first, second), ...]``: module-tree pairs first, then the confirmed call-order ones.

    Example:
        >>> find_pairs(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
        [('0', '2')]
    """
    pairs = _tree_pairs(model)
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        pairs += _traced_pairs(model, args, pairs, atol)
    if names is not None:
        pairs = [p for p in pairs if p[0] in names and p[1] in names]
    # A weight shared with another module (an output head tied to an embedding) cannot be rescaled for one pair.
    shared = _shared_owners(model)
    return [p for p in pairs if p[0] not in shared and p[1] not in shared]


def _shared_owners(model: nn.Module) -> set[str]:
    """Names of modules holding a parameter that another module holds too."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return {name for names in owners.values() if len(names) > 1 for name in names}


def _out_ranges(layer: nn.Module) -> torch.Tensor:
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    return w.detach().abs().reshape(w.shape[0], -1).amax(1)  # (out,)


def _in_ranges(layer: nn.Module, channels: int) -> torch.Tensor:
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    # (in, out, ...) -> (channels, block * out * ...): a flattened channel's block of columns is contiguous.
    return w.detach().abs().transpose(0, 1).reshape(channels, -1).amax(1)  # (channels,)


def _rescale(first: nn.Module, second: nn.Module, s: torch.Tensor) -> None:
    w1, w2 = first.weight, second.weight
    assert isinstance(w1, torch.Tensor) and isinstance(w2, torch.Tensor)
    columns = s.repeat_interleave(_block(first, second))  # (in2,) = (out1 * block,)
    with torch.no_grad():
        w1.div_(s.reshape(-1, *([1] * (w1.dim() - 1))).to(w1.dtype))  # (out1, ...) rows
        if isinstance(first.bias, torch.Tensor):
            first.bias.div_(s.to(first.bias.dtype))
        w2.mul_(columns.reshape(1, -1, *([1] * (w2.dim() - 2))).to(w2.dtype))  # (out2, in2, ...) columns


def equalize(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    names: set[str] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    atol: float = 1e-4,
) -> list[Equalized]:
    """Equalize the per-channel weight ranges of every consecutive layer pair, in place, until converged.

    Args:
        model: the model (BatchNorm already folded).
        example_inputs: optional input (tensor or tuple) to check the outputs stay the same.
        names: restrict to pairs whose two layers are in this set.
        max_iter: sweeps over all pairs at most.
        tol: stop when every scale of a sweep is within ``1 +- tol``.
        atol: tolerance of the output check, relative to the output's largest magnitude.

    Returns:
        The equalized pairs with their total scales (empty when none were found).

    Raises:
        QuantaError: the output check fails (the model is restored first).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> [(e.first, e.second) for e in equalize(m, torch.randn(3, 4))]
        [('0', '2')]
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    pairs = find_pairs(model, names, example_inputs, atol=atol)
    if not pairs:
        return []
    with torch.no_grad():
        before = model(*args) if example_inputs is not None else None
    modules = dict(model.named_modules())
    # Restored in place on failure, so references to these module objects (a quantize plan) stay valid.
    saved = {n: {k: v.clone() for k, v in modules[n].state_dict().items()} for n in {n for p in pairs for n in p}}
    totals = {p: torch.ones(output_channels(modules[p[0]]), dtype=torch.float64) for p in pairs}
    for _ in range(max_iter):
        worst = 0.0
        for pair in pairs:
            first, second = modules[pair[0]], modules[pair[1]]
            r1 = _out_ranges(first).double()
            r2 = _in_ranges(second, len(r1)).double()
            # s_i = sqrt(r1_i / r2_i); a dead channel (a range of 0) keeps s_i = 1.
            s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-300)), torch.ones_like(r1))
            _rescale(first, second, s)
            totals[pair] *= s
            worst = max(worst, float((s.log().abs()).max()))
        if worst < tol:
            break
    if before is not None and not _same_output(model, args, before, atol):
        for name, state in saved.items():
            modules[name].load_state_dict(state)
        raise QuantaError(
            "cross-layer equalization changed the model's output: a pair found from the module tree is not "
            "joined by a positively homogeneous function in forward (e.g. a functional sigmoid or a residual "
            f"add). The model was restored; the pairs tried were {pairs}."
        )
    return [Equalized(a, b, totals[(a, b)].float()) for a, b in pairs]


def _transform(model: nn.Module, targets: dict[str, Any], steps: list[Any]) -> None:
    from quanta.methods.bn_fold import fold_batchnorm

    names, example = set(targets), (steps[0] if steps else None)

    # Given back as it was if anything below fails: every module's parameter objects and values (folding and
    # equalizing work in place, and folding may add a bias) and the BatchNorms that folding replaces with Identity.
    snapshot = [
        (m, dict(m._parameters), {k: v.detach().clone() for k, v in m._parameters.items() if v is not None})
        for m in model.modules()
    ]
    children = [(name, m) for name, m in model.named_modules() if name]
    try:
        # BatchNorm is affine, not homogeneous: fold it first (function-preserving) so conv -> BN -> ReLU -> conv
        # pairs appear.
        fold_batchnorm(model, example_inputs=example)
        equalize(model, example, names=names)
    except BaseException as exc:
        for name, module in children:  # parents come before their children in named_modules()
            model.set_submodule(name, module)
        with torch.no_grad():
            for module, params, values in snapshot:
                module._parameters.clear()
                module._parameters.update(params)
                for key, value in values.items():
                    params[key].copy_(value)  # type: ignore[union-attr]
        if isinstance(exc, (TypeError, RuntimeError)) and not isinstance(exc, QuantaError):
            raise QuantaError(
                f"cle could not run the model on the first calibration step: {exc}. Calibration steps must fit "
                "model.forward (a tensor, a tuple of positional arguments or a dict of keyword arguments); for "
                "(inputs, labels) loaders pass quanta.calib.inputs(loader). The model was left as it was."
            ) from exc
        raise


register_method(
    Method(
        "cle",
        "transform",
        "cross-layer equalization of consecutive layers (BatchNorm folded first; no data needed)",
        transform=_transform,
    )
)
