"""Sequential block-by-block quantization of a transformer (GPTQ's scheme for language models).

The repeated blocks are found without per-architecture code: the longest ``nn.ModuleList`` whose children all
have one class (Llama's ``model.layers``, GPT-2's ``transformer.h``, BERT's ``encoder.layer``). Then:

1. the inputs of block 0 (its positional and keyword arguments: hidden states, attention mask, rotary position
   embeddings, ...) are captured for every calibration step by a hook that stops the forward pass there;
2. block ``i`` is quantized on its own with the recipe (any method: statistics, observers and searches see the
   block's inputs *as the already quantized blocks before it produce them*), under its qualified name, so the
   recipe's rules read the same names as for the whole model;
3. the quantized block is run on those inputs, and its outputs become block ``i + 1``'s inputs.

Modules outside the blocks (embeddings, final norm, ``lm_head``) are handled last by the same recipe on the whole
model (the presets keep them in float). The result is the same kind of model ``quanta.quantize`` gives (same
modules, kernels, quanta.json), differing only in what data each layer was calibrated on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from quanta.api import _plan, _validate, quantize_resolved
from quanta.calib import Fingerprint, call_step
from quanta.errors import CorruptDataError, QuantaError, UnsupportedError
from quanta.lm.offload import ShardedWeights, materialize
from quanta.lm.resume import BlockState, run_key
from quanta.recipe import Recipe, resolve_recipe

__all__ = ["find_blocks", "quantize_sequential"]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the model's repeated blocks: the longest ModuleList of >= 2 modules
    that all have the same class (the first such list on a tie).

    Raises:
        QuantaError: the model has no such list.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        repeated = isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1
        if repeated and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise QuantaError(
            f"{type(model).__name__} has no list of repeated blocks (an nn.ModuleList of modules of one class); "
            "quantize it with quanta.quantize instead."
        )
    return best


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at block 0."""


def _capture_inputs(
    model: nn.Module, first: nn.Module, steps: list[Any]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            # No KV cache for a transformers model: it would pin memory for nothing.
            extra = {"use_cache": False} if hasattr(model, "config") else {}
            for index, step in enumerate(steps):
                try:
                    call_step(model, step, index, **extra)
                except _Captured:
                    continue
                raise QuantaError("the calibration step never reached the model's first block; check the inputs.")
    finally:
        handle.remove()
    return captured


class _BlockScope(nn.Module):
    """One block under its qualified name (``model.layers.3``), called with a captured ``(args, kwargs)`` step."""

    def __init__(self, path: str, block: nn.Module) -> None:
        super().__init__()
        *parents, leaf = path.split(".")
        node: nn.Module = self
        for part in parents:
            child = nn.Module()
            node.add_module(part, child)
            node = child
        node.add_module(leaf, block)
        self.path = path

    def forward(self, step: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = step
        return self.get_submodule(self.path)(*args, **kwargs)


def _next_inputs(output: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(hidden, torch.Tensor):
        raise UnsupportedError(f"a block returned {type(output).__name__}; expected hidden states (a tensor first).")
    return (hidden, *args[1:])


def quantize_sequential(
    model: nn.Module,
    recipe: Recipe | str,
    calib: Iterable[Any] | None,
    *,
    progress: bool = False,
    resume: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Quantize ``model`` in place block by block (see the module docstring) and return it.

    Args:
        model: a transformer (any module tree with a list of repeated blocks). A model from
            :func:`quanta.lm.load_offloaded` has its blocks on disk: each is read just before it is quantized.
        recipe: a Recipe, a preset name or a recipe JSON path, as for :func:`quanta.quantize`.
        calib: calibration steps (token-id batches); required (the point is calibrating on each block's inputs).
        progress: show a progress bar over the blocks.
        resume: a directory for the run's per-block state (:mod:`quanta.lm.resume`): each finished block is
            recorded there, and a run that finds a state there continues after its last finished block with
            the same result, byte for byte. Remove it (``BlockState.clear``) once the model is saved.

    Raises:
        QuantaError: no calibration data, no repeated blocks, a step that never reaches the first block, or a
            resume state left by a run with other settings.
        UnsupportedError: a recipe that keeps the first and last layers in float (whole-model positions).
    """
    resolved = resolve_recipe(recipe)
    from_preset = isinstance(recipe, str) and not recipe.endswith(".json")
    if resolved.keep_first_last:
        raise UnsupportedError(
            f"recipe {resolved.name or recipe} keeps the model's first and last layers in float, which a block "
            "on its own cannot see; use quanta.quantize for it."
        )
    steps = [] if calib is None else list(calib)
    if not steps:
        raise QuantaError("sequential quantization calibrates every block on data: pass calib=... (token batches).")
    # The whole plan is checked on the whole model before anything changes (rules that match nothing, schemes a
    # method cannot use, NaN weights), as quanta.quantize does.
    planned, _ = _plan(model, resolved)
    _validate(model, resolved, planned, from_preset, steps)
    del planned  # it holds every float layer: kept, it would keep each block's float weights alive to the end
    name, blocks = find_blocks(model)
    offload: ShardedWeights | None = getattr(model, "quanta_offload", None)
    state, finished = None, 0
    if resume is not None:
        fingerprint = Fingerprint()
        list(fingerprint.wrap(steps))
        state = BlockState(resume, run_key(resolved.to_dict(), fingerprint.hexdigest(), blocks))
        finished = state.finished()
        if finished > len(blocks):
            raise CorruptDataError(f"{resume} records {finished} finished blocks of {len(blocks)}; delete it.")
    inputs = _capture_inputs(model, blocks[0], steps)
    if state is not None and finished:
        hidden = state.hidden(finished)
        if len(hidden) != len(inputs):
            raise CorruptDataError(f"{resume} holds {len(hidden)} calibration steps, not {len(inputs)}; delete it.")
        inputs = [((h, *args[1:]), kwargs) for h, (args, kwargs) in zip(hidden, inputs, strict=True)]
    indices: Iterable[int] = range(len(blocks))
    if progress:
        from rich.progress import track

        indices = track(list(indices), description="quantizing blocks")
    for i in indices:
        scope = _BlockScope(f"{name}.{i}", blocks[i])
        if state is not None and i < finished:
            state.restore(scope, i)  # packed as the killed run left it; its outputs are the saved hidden states
            continue
        if offload is not None:
            materialize(blocks[i], f"{name}.{i}", offload)  # this block's float weights, read from disk now
        # Each step as one keyword argument: calibration passes call model(**step) for a dict.
        quantize_resolved(scope, resolved, [{"step": s} for s in inputs], check_rules=False)
        block = scope.get_submodule(scope.path)  # the same module object, its layers now packed
        with torch.no_grad():
            inputs = [(_next_inputs(block(*args, **kwargs), args), kwargs) for args, kwargs in inputs]
        if state is not None:
            state.record(scope, i, [args[0] for args, _ in inputs])
    # Embeddings, final norm, lm_head: the recipe on the whole model (already packed blocks are skipped).
    return quantize_resolved(model, resolved, steps, progress=False, check_rules=False)
