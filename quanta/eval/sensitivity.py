"""``quanta.sensitivity``: quantize one layer at a time with each candidate recipe, measure the whole model, and
put cheap proxies beside each measurement.

For each layer a candidate would quantize, the candidate's own rule for that layer becomes a one-rule recipe
(``pattern`` = the layer's exact name), :func:`quanta.api.quantize_resolved` swaps in the packed twin, the metric
is measured on the model, and the float layer is put back. Only that layer is quantized each time; nothing is
copied, except a snapshot of the float tensors when a candidate runs a transform (``cle``, ``awq``,
``smoothquant``) that rewrites neighbouring layers. Data-aware methods (``gptq``) read ``calib`` for every layer.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from quanta.api import _plan, model_nbytes, quantize_resolved
from quanta.errors import QuantaError
from quanta.eval.proxies import input_stats, layer_proxies
from quanta.eval.sensitivity_metric import build_metric
from quanta.eval.sensitivity_result import LayerSensitivity, Sensitivity
from quanta.methods.registry import parse_methods
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule
from quanta.recipe import Recipe, Rule, resolve_recipe

__all__ = ["sensitivity"]

_MODEL_ATTRS = ("quanta_recipe", "quanta_provenance", "quanta_left_in_float")  # what quantize_resolved sets


def _exact(name: str) -> str:
    """A glob that matches ``name`` only (``[``, ``*`` and ``?`` escaped as one-character classes)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def _label(candidate: Recipe | str | Any, recipe: Recipe) -> str:
    return candidate if isinstance(candidate, str) else recipe.name


@contextlib.contextmanager
def _float_restored(model: nn.Module, name: str, snapshot: bool) -> Iterator[None]:
    """Put the float layer ``name`` back afterwards, with what quantize_resolved changed on the model."""
    float_module = model.get_submodule(name)
    attrs = {k: model.__dict__[k] for k in _MODEL_ATTRS if k in model.__dict__}
    encoders = [(m, m.activation_relu_or_gelu) for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    flow = int8_flow.is_enabled(model)
    tensors = {k: t.detach().clone() for k, t in model.state_dict().items()} if snapshot else None
    try:
        yield
    finally:
        model.set_submodule(name, float_module)
        for key in _MODEL_ATTRS:
            model.__dict__.pop(key, None)
        model.__dict__.update(attrs)
        for layer, flag in encoders:  # disable_fused_fast_paths turned these off
            layer.activation_relu_or_gelu = flag
        if int8_flow.is_enabled(model) and not flow:
            int8_flow.enable(model, on=False)
        if tensors is not None:
            model.load_state_dict(tensors)


def _transforms(rule: Rule) -> bool:
    return any(m.stage == "transform" for m in parse_methods(rule.method).all)


def _layer_rules(
    model: nn.Module, candidates: Sequence[Recipe | str], layers: Sequence[str] | None
) -> tuple[list[str], list[str], dict[tuple[str, str], Rule]]:
    """Candidate labels, the layers to measure (model order) and each (layer, candidate)'s rule."""
    labels: list[str] = []
    rules: dict[tuple[str, str], Rule] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no quantized twin": those layers are simply not measured
        for candidate in candidates:
            recipe = resolve_recipe(candidate)
            label = _label(candidate, recipe)
            if label in labels:
                raise QuantaError(f"candidate {label!r} is given twice; give each candidate once.")
            labels.append(label)
            for step in _plan(model, recipe)[0]:
                if layers is None or any(fnmatch.fnmatchcase(step.name, p) for p in layers):
                    rules[(step.name, label)] = step.rule
    order = [n for n, _ in model.named_modules() if any((n, c) in rules for c in labels)]
    return labels, order, rules


def sensitivity(
    model: nn.Module,
    recipe_candidates: Sequence[Recipe | str],
    calib: Iterable[Any],
    metric: str | Callable[[nn.Module], float] = "kl",
    *,
    eval_data: Any = None,
    layers: str | Sequence[str] | None = None,
    window: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Sensitivity:
    """Measure how much quantizing each layer alone, with each candidate, changes the model's output.

    Args:
        model: the float model (left as it was: every layer is restored after its measurement).
        recipe_candidates: recipes, preset names (``"w2a16-g32"``, ``"w8a16"``) or recipe JSON paths; each is
            applied to one layer at a time, with the rule it would use for that layer.
        calib: calibration inputs (as for :func:`quanta.quantize`): for the Hessian and outlier proxies, for
            data-aware methods and static activations, and the data of ``"kl"`` when ``eval_data`` is None.
        metric: ``"kl"`` (vs float), ``"loss"``, ``"accuracy"`` or ``f(model) -> float`` (growing with damage);
            see :mod:`quanta.eval.sensitivity_metric`.
        eval_data: the evaluation set: ``(x, y)`` tensors, a 1-D tensor of token ids, or model inputs (``"kl"``).
        layers: glob(s) on module names to measure; default: every layer some candidate quantizes.
        window: tokens per window when ``eval_data`` is token ids.
        batch_size: inputs (or windows) per forward pass of the evaluation.
        progress: show a progress bar (on stderr).

    Returns:
        A :class:`~quanta.eval.sensitivity_result.Sensitivity`.

    Raises:
        QuantaError: no candidates, empty or missing calibration data, an evaluation set missing for the metric,
            or no layer to measure. SchemeError: an unknown preset.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> result = sensitivity(net, ["w2a16", "w8a16"], [torch.randn(64, 16)])
        >>> [(e.layer, e.candidate) for e in result.entries]
        [('0', 'w2a16'), ('0', 'w8a16'), ('2', 'w2a16'), ('2', 'w8a16')]
        >>> result.entry("0", "w2a16").effect > result.entry("0", "w8a16").effect
        True
    """
    if isinstance(recipe_candidates, (str, Recipe)) or not recipe_candidates:
        raise QuantaError("recipe_candidates must be a non-empty list of recipes or presets, e.g. ['w4a16', 'w8a16'].")
    if calib is None:
        raise QuantaError(
            "sensitivity needs calibration inputs (calib=[batch, ...]) for its Hessian and outlier proxies."
        )
    steps = list(calib)  # read several times: proxies, data-aware methods, the reference outputs of "kl"
    if not steps:
        raise QuantaError("the calibration data is empty; pass at least one batch of inputs.")
    globs = [layers] if isinstance(layers, str) else None if layers is None else list(layers)
    labels, names, rules = _layer_rules(model, recipe_candidates, globs)
    if not names:
        raise QuantaError(
            f"no layer to measure: the candidates quantize no module{' matching ' + str(globs) if globs else ''} "
            "(an already quantized model has none left)."
        )
    was_training = model.training
    model.eval()  # batch norms must not update their statistics while we measure
    try:
        measure = build_metric(metric, model, eval_data, steps, window=window, batch_size=batch_size)
        float_value = measure(model)
        float_nbytes = model_nbytes(model)
        stats = input_stats(model, names, steps)
        pairs = [(n, c) for n in names for c in labels if (n, c) in rules]
        entries = []
        iterator: Iterable[tuple[str, str]] = pairs
        if progress:
            from rich.console import Console
            from rich.progress import track

            iterator = track(pairs, description="measuring layers", console=Console(stderr=True))
        for name, label in iterator:
            rule = rules[(name, label)]
            one = Recipe(rules=(replace(rule, pattern=_exact(name), module_type=None),), name=f"{label}@{name}")
            float_module = model.get_submodule(name)
            with _float_restored(model, name, snapshot=_transforms(rule)):
                quantize_resolved(model, one, steps)
                packed = model.get_submodule(name)
                if not isinstance(packed, QuantModule):
                    raise QuantaError(f"{name} was not quantized by {label}; please report this.")
                value = measure(model)
                proxies = layer_proxies(float_module, packed, stats.get(name))
                nbytes = model_nbytes(packed)
                qweights = packed.qweights.values()
            entries.append(
                LayerSensitivity(
                    layer=name,
                    kind=type(float_module).__name__,
                    candidate=label,
                    scheme=str(rule.weight),
                    value=value,
                    effect=(float_value - value) if measure.higher_is_better else (value - float_value),
                    nbytes=nbytes,
                    float_nbytes=model_nbytes(float_module),
                    **proxies,
                    weight_nbytes=sum(q.nbytes for q in qweights),
                    weight_numel=sum(q.numel for q in qweights),
                )
            )
    finally:
        model.train(was_training)
    return Sensitivity(
        metric=measure.name,
        higher_is_better=measure.higher_is_better,
        float_value=float_value,
        float_nbytes=float_nbytes,
        layers=tuple(names),
        candidates=tuple(labels),
        entries=tuple(entries),
    )
