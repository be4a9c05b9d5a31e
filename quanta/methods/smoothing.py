"""Per-input-channel scales moved from linear layers into the normalization that feeds them (SmoothQuant, AWQ).

For a normalization layer whose output is scaled per channel (``y = norm(x) * w + b``: LayerNorm, Llama's RMSNorm)
feeding linear layers ``z = W y``, dividing channel ``j`` of the norm's output by ``s_j`` and multiplying column
``j`` of every ``W`` it feeds by ``s_j`` leaves the function unchanged::

    w' = w / s,  b' = b / s,  W' = W diag(s)

SmoothQuant picks ``s`` to move activation outliers into the weights (W8A8); AWQ picks it so that the channels the
activations make important are quantized more finely (weight-only). Both need the same two things, found here
without tracing the model:

* **groups**: which norm feeds which linear layers. One calibration step runs with hooks that note every module's
  output tensor and every target layer's input tensor; a layer whose input *is* a norm's output (the same tensor
  object: ``q_proj``/``k_proj``/``v_proj`` after ``input_layernorm``, ``gate_proj``/``up_proj`` after
  ``post_attention_layernorm``, BERT's and OPT's norms likewise) joins that norm's group. Layers fed by anything
  else (``o_proj`` after attention, ``down_proj`` after the gated product) have no norm to absorb a scale and are
  left alone.
* **statistics**: each group's input activations over the calibration data (per-channel max |x| and mean |x|, and
  a bounded sample of rows for AWQ's search).

:func:`apply_scales` rescales and then checks on the first calibration step that the model's outputs are unchanged
(a norm whose weight is not a plain per-channel factor, such as Gemma's ``1 + w``, would change them); on a
mismatch everything is put back and a QuantaError names the norm classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from quanta import distributed
from quanta.calib import call_step, run
from quanta.errors import QuantaError

__all__ = ["MAX_ROWS", "Group", "apply_scales", "find_groups", "is_channel_norm", "run_steps"]

MAX_ROWS = 4096  # rows of each group's input kept for a scale search (seeded sample over all steps)


def is_channel_norm(module: nn.Module) -> bool:
    """A normalization layer whose output is multiplied per channel by a 1-D ``weight`` (plus an optional bias)."""
    weight = getattr(module, "weight", None)
    name = type(module).__name__.lower()
    return (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 1
        and (isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith("norm"))
        and not isinstance(module, nn.GroupNorm)  # GroupNorm scales channel dim 1, not the features linears read
    )


@dataclass
class Group:
    """A norm and the linear layers that read its output, with their input's statistics."""

    norm_name: str
    norm: nn.Module
    layers: dict[str, nn.Linear]
    absmax: torch.Tensor | None = None  # (C,) max |x| per channel over the calibration data
    absmean: torch.Tensor | None = None  # (C,) mean |x| per channel
    rows: torch.Tensor | None = None  # (<= MAX_ROWS, C) sampled input rows, float32
    count: int = field(default=0)


def find_groups(model: nn.Module, names: Iterable[str], steps: list[Any], keep_rows: bool = False) -> list[Group]:
    """The norm -> linear groups among the layers ``names``, with their input statistics over ``steps``.

    Raises:
        QuantaError: no calibration steps.
    """
    if not steps:
        raise QuantaError("scale migration learns from data: pass calib=... (an iterable of model inputs).")
    wanted = {n: m for n, m in model.named_modules() if n in set(names) and isinstance(m, nn.Linear)}
    norms = {n: m for n, m in model.named_modules() if n and is_channel_norm(m)}
    produced: dict[int, str] = {}
    read: dict[str, int] = {}
    keep: list[torch.Tensor] = []  # holds the tensors of the step so that their ids stay unique
    handles = []
    for name, module in norms.items():

        def note_output(_m: nn.Module, _a: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                produced.setdefault(id(out), name)
                keep.append(out)

        handles.append(module.register_forward_hook(note_output))
    for name, module in wanted.items():

        def note_input(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                read.setdefault(name, id(args[0]))
                keep.append(args[0])

        handles.append(module.register_forward_pre_hook(note_input))
    try:
        with torch.no_grad():
            call_step(model, steps[0])
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[str, Group] = {}
    for name, layer in wanted.items():
        norm_name = produced.get(read.get(name, -1))
        if norm_name is None:
            continue
        norm = norms[norm_name]
        weight = norm.weight
        if not isinstance(weight, torch.Tensor) or weight.numel() != layer.in_features:
            continue
        groups.setdefault(norm_name, Group(norm_name, norm, {})).layers[name] = layer
    keep.clear()
    _collect(model, list(groups.values()), steps, keep_rows)
    return list(groups.values())


def _collect(model: nn.Module, groups: list[Group], steps: list[Any], keep_rows: bool) -> None:
    """Per-channel statistics of each group's input (its first layer's input) over every step.

    The same on any number of processes (inside :func:`quanta.distributed.across`, ``steps`` being this rank's
    share): maxima are exact in any order; each step's sum of |x| is a float64 partial added along the fixed tree
    over the global step indices; each step's sampled rows are drawn with a generator seeded by its global index
    and gathered in step order before the final pick.
    """
    first, end, total = distributed.step_range(len(steps))
    sums = {g.norm_name: distributed.TreeSum(first, end, total) for g in groups}
    partial: dict[str, torch.Tensor] = {}
    generator = torch.Generator()
    sampled: dict[str, list[torch.Tensor]] = {g.norm_name: [] for g in groups}
    handles = []
    for group in groups:
        first_layer = next(iter(group.layers.values()))

        def observe(_m: nn.Module, args: tuple[Any, ...], group: Group = group) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()  # (tokens, C)
            peak = x.amax(dim=0)
            group.absmax = peak if group.absmax is None else torch.maximum(group.absmax, peak)
            step_sum = x.double().sum(dim=0)
            name = group.norm_name
            partial[name] = step_sum if name not in partial else partial[name] + step_sum
            group.count += x.shape[0]
            if keep_rows:
                take = torch.randperm(x.shape[0], generator=generator)[:MAX_ROWS]
                sampled[name].append(args[0].detach().reshape(-1, x.shape[1])[take].float())

        handles.append(first_layer.register_forward_pre_hook(observe))
    try:
        with torch.no_grad():
            for index, step in enumerate(steps):
                generator.manual_seed(first + index)  # the same draws on any rank
                call_step(model, step, index)
                for group in groups:
                    step_sum = partial.pop(group.norm_name, None)
                    if step_sum is None:  # the group's layers were not reached in this step
                        step_sum = torch.zeros(_channels(group), dtype=torch.float64)
                    sums[group.norm_name].add(step_sum)
    finally:
        for handle in handles:
            handle.remove()
    pick_generator = torch.Generator().manual_seed(0)
    for group in groups:
        count = distributed.combine_count(group.count)
        group.count = count
        channels = _channels(group)
        local_max = group.absmax if group.absmax is not None else torch.zeros(channels)
        if count == 0:
            group.absmax = group.absmean = None
            continue
        group.absmax = distributed.combine_max(local_max)
        group.absmean = (distributed.combine(sums[group.norm_name].result()) / count).float()
        if keep_rows:
            group.rows = pick_rows(sampled[group.norm_name], channels, pick_generator)


def pick_rows(parts: list[torch.Tensor], channels: int, generator: torch.Generator) -> torch.Tensor:
    """This rank's sampled rows ``parts`` gathered with every rank's in step order, then at most MAX_ROWS of them
    picked with ``generator``: the same sample on any number of processes."""
    rows = distributed.gather_rows(torch.cat(parts) if parts else torch.zeros(0, channels))
    if rows.shape[0] == 0:
        return rows
    return rows[torch.randperm(rows.shape[0], generator=generator)[:MAX_ROWS]]


def _channels(group: Group) -> int:
    return next(iter(group.layers.values())).in_features


def run_steps(model: nn.Module, steps: list[Any], handles: list[Any]) -> None:
    """Run every calibration step through ``model`` without gradients, then remove the hooks ``handles``."""
    try:
        run(model, steps)
    finally:
        for handle in handles:
            handle.remove()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the float rounding the rescaling adds: 1e-3 relative in fp32, 8 units of the last place of a
    low-precision dtype (bf16 rounds at 4e-3). A norm that does not scale by its weight changes outputs by far more."""
    if a.shape != b.shape:
        return False
    eps = torch.finfo(b.dtype).eps if b.is_floating_point() else 0.0
    rtol = max(1e-3, 8 * eps)
    return torch.allclose(a.float(), b.float(), rtol=rtol, atol=rtol * float(b.float().abs().max()) + 1e-6)


def _outputs(model: nn.Module, step: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().clone() for t in tree_leaves(call_step(model, step)) if isinstance(t, torch.Tensor)]


def apply_scales(model: nn.Module, scales: dict[str, torch.Tensor], groups: list[Group], step: Any) -> None:
    """Divide each group's norm output by its scale (``scales[norm name]``, shape ``(C,)``, positive) and multiply
    the matching weight columns by it; check on ``step`` that the model computes the same, else undo and raise."""
    chosen = [g for g in groups if g.norm_name in scales]
    if not chosen:
        return
    before = _outputs(model, step)
    saved = [(t, t.detach().clone()) for g in chosen for t in _tensors(g)]
    with torch.no_grad():
        for group in chosen:
            weight = _norm_weight(group)
            s = scales[group.norm_name].to(weight.dtype)
            weight.div_(s)
            bias = getattr(group.norm, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.div_(s)
            for layer in group.layers.values():
                layer.weight.mul_(s.to(layer.weight.dtype))
    after = _outputs(model, step)
    same = len(before) == len(after) and all(_close(a, b) for a, b in zip(after, before, strict=True))
    if not same:
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
        kinds = sorted({type(g.norm).__name__ for g in chosen})
        raise QuantaError(
            f"moving scales into {', '.join(kinds)} changed the model's output, so the norm does not scale its "
            "output per channel by its weight; the model was left as it was. Use a method without scale migration."
        )


def _norm_weight(group: Group) -> torch.Tensor:
    weight = group.norm.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _tensors(group: Group) -> list[torch.Tensor]:
    out = [_norm_weight(group)]
    bias = getattr(group.norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        out.append(bias)
    return out + [layer.weight for layer in group.layers.values()]
