"""``quanta.eval.sweep``: quantize one model with every recipe of a grid (bits x methods x group sizes) and measure
each: bytes, bits per weight, quality, KL vs float, latency and quantize time, with the Pareto fronts.

Every point starts from a fresh ``copy.deepcopy`` of the float model, so points never see each other's changes and
the float model is left as it was. A combination that cannot run (a method that needs data without calibration
data, a method that refuses the scheme, a preset that quantizes no layer) is skipped with the reason recorded.
Latency is the median of a few forward passes on one fixed input at one thread, interleaved with the float model's
passes in the same run, so both see the same machine.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from quanta.api import model_nbytes, quantize
from quanta.errors import QuantaError, UnsupportedError
from quanta.eval.sweep_eval import Evaluation, call_model
from quanta.eval.sweep_result import SweepPoint, SweepResult
from quanta.methods.registry import get_method, parse_methods
from quanta.nn.base import QuantModule
from quanta.recipe import Recipe, resolve_recipe

__all__ = ["check_combination", "sweep", "sweep_grid"]

QuantizeFn = Callable[[nn.Module, Any, Any], nn.Module]  # (model, preset name or Recipe, calib) -> model


def sweep_grid(bits: Sequence[int], methods: Sequence[str], groups: Sequence[int | None]) -> list[str]:
    """Weight-only presets ``w{b}a16[-g{N}][-{method}]`` for every bits x method x group (``None``: per channel).

    Raises:
        QuantaError: an empty axis. UnsupportedError: a method name that is not registered (a typo is an error,
            not a skipped combination).

    Example:
        >>> sweep_grid([4, 8], ["rtn", "gptq"], [32, None])
        ['w4a16-g32', 'w4a16', 'w4a16-g32-gptq', 'w4a16-gptq', 'w8a16-g32', 'w8a16', 'w8a16-g32-gptq', 'w8a16-gptq']
    """
    if not bits or not methods or not groups:
        raise QuantaError("a sweep grid needs at least one bit width, one method and one group size.")
    for method in methods:
        for name in method.split("_"):
            get_method(name)  # UnsupportedError naming the available methods
    return [
        f"w{b}a16{'' if g is None else f'-g{g}'}{'' if m == 'rtn' else f'-{m}'}"
        for b in bits
        for m in methods
        for g in groups
    ]


def check_combination(recipe: Recipe, calib: Any) -> str | None:
    """Why ``recipe`` cannot run (without quantizing anything), or ``None`` when it can be tried."""
    for rule in recipe.rules:
        if rule.skip:
            continue
        for method in parse_methods(rule.method).all:
            if method.needs_data and calib is None:
                return f"method {method.name} learns from data and no calibration data was given"
            problem = None if method.check is None or rule.weight is None else method.check(rule.weight)
            if problem:
                return problem
        if rule.activation is not None and not rule.dynamic and calib is None:
            return f"static {rule.activation} activations need calibration data"
    return None


def _describe(recipe: Recipe) -> tuple[int | None, str, int | None]:
    """(weight bits, method, group size) of the recipe's main (last non-skip) rule."""
    rules = [r for r in recipe.rules if not r.skip and r.weight is not None]
    if not rules:
        return None, "rtn", None
    rule = rules[-1]
    weight = rule.weight
    assert weight is not None
    return weight.fmt.bits, rule.method, weight.group_size if weight.granularity == "group" else None


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _latencies(reference: nn.Module, model: nn.Module, x: Any, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of each of ``rounds`` forward passes of both models, alternating, at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fair, repeatable comparison on a shared machine
    try:
        with torch.no_grad():
            call_model(reference, x), call_model(model, x)  # warm-up: first calls allocate
            pairs = []
            for _ in range(rounds):
                start = time.perf_counter()
                call_model(reference, x)
                middle = time.perf_counter()
                call_model(model, x)
                pairs.append((middle - start, time.perf_counter() - middle))
    finally:
        torch.set_num_threads(threads)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def bits_per_weight(model: nn.Module) -> float:
    """``8 x`` bytes of the quantized layers (codes, scales, zero points, bias) / the weights they quantize."""
    layers = [m for m in model.modules() if isinstance(m, QuantModule)]
    weights = sum(qt.numel for m in layers for qt in m.qweights.values())
    return 8.0 * sum(model_nbytes(m) for m in layers) / weights if weights else float("nan")


def sweep(
    model: nn.Module,
    grid: Sequence[str | Recipe],
    calib: Iterable[Any] | None,
    evaluate: Evaluation,
    *,
    quantize_fn: QuantizeFn | None = None,
    rounds: int = 5,
    on_point: Callable[[str], None] | None = None,
) -> SweepResult:
    """Quantize a fresh copy of ``model`` with each recipe of ``grid`` and measure it against the float model.

    Args:
        model: the float model (never modified; put in eval mode for the measurements).
        grid: presets or recipes, e.g. from :func:`sweep_grid`.
        calib: calibration inputs for data-aware methods, or ``None`` (those combinations are skipped).
        evaluate: what to measure, e.g. :func:`quanta.eval.sweep_eval.accuracy_evaluation`.
        quantize_fn: ``f(model, recipe, calib) -> model`` (default :func:`quanta.quantize`; language models use
            :func:`quanta.lm.quantize_sequential`).
        rounds: timed forward passes per point (the median is kept).
        on_point: called with each recipe's name before it runs (progress reporting).

    Returns:
        A :class:`~quanta.eval.sweep_result.SweepResult`; its ``front()`` gives the Pareto front.

    Raises:
        QuantaError: an empty grid, a recipe given twice, or no combination that could run (the message lists why
            each was skipped). SchemeError: an unknown preset.

    Example:
        >>> from quanta.eval.sweep_eval import accuracy_evaluation
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
        >>> x = torch.randn(64, 16)
        >>> result = sweep(net, ["w2a16", "w8a16", "w4a16-gptq"], None, accuracy_evaluation(net, x, net(x).argmax(1)))
        >>> [p.recipe for p in result.points], [s[0] for s in result.skipped]
        (['w2a16', 'w8a16'], ['w4a16-gptq'])
    """
    if isinstance(grid, (str, Recipe)) or not grid:
        raise QuantaError("the sweep grid must be a non-empty list of presets or recipes, e.g. ['w4a16', 'w8a16'].")
    steps = None if calib is None else list(calib)  # read once per point
    run = quantize_fn or (lambda m, r, c: quantize(m, r, c))
    was_training = model.training
    model.eval()
    labels: list[str] = []
    points: list[SweepPoint] = []
    skipped: list[tuple[str, str]] = []
    float_times: list[float] = []
    try:
        float_quality = evaluate.quality(model)
        for entry in grid:
            recipe = resolve_recipe(entry)
            label = entry if isinstance(entry, str) else recipe.name
            if label in labels:
                raise QuantaError(f"recipe {label!r} is in the grid twice; give each once.")
            labels.append(label)
            if on_point is not None:
                on_point(label)
            reason = check_combination(recipe, steps)
            if reason is not None:
                skipped.append((label, reason))
                continue
            net = copy.deepcopy(model)
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "no quantized twin": such layers simply stay float
                    net = run(net, entry, steps)  # a preset name, so its generic rules may match nothing
            except (UnsupportedError, QuantaError) as exc:
                skipped.append((label, " ".join(str(exc).split())))
                continue
            seconds = time.perf_counter() - start
            if not any(isinstance(m, QuantModule) for m in net.modules()):
                skipped.append(
                    (label, "it quantizes no layer of this model (already quantized, or no supported layer)")
                )
                continue
            net.eval()
            t_float, t_quant = _latencies(model, net, evaluate.latency_input, rounds)
            float_times += t_float
            bits, method, group = _describe(recipe)
            points.append(
                SweepPoint(
                    recipe=label,
                    bits=bits,
                    method=method,
                    group=group,
                    nbytes=model_nbytes(net),
                    bits_per_weight=bits_per_weight(net),
                    quality=evaluate.quality(net),
                    kl=evaluate.kl(net),
                    latency_ms=_median_ms(t_quant),
                    speedup=statistics.median(t_float) / statistics.median(t_quant),
                    quantize_seconds=seconds,
                )
            )
            del net
        if not points:
            reasons = "; ".join(f"{label}: {why}" for label, why in skipped)
            raise QuantaError(
                f"no combination of the sweep could run: {reasons}. Change the grid or pass calibration data."
            )
        reference = SweepPoint(
            recipe="float",
            bits=None,
            method="",
            group=None,
            nbytes=model_nbytes(model),
            bits_per_weight=float("nan"),
            quality=float_quality,
            kl=0.0,
            latency_ms=_median_ms(float_times),
            speedup=1.0,
            quantize_seconds=0.0,
        )
    finally:
        model.train(was_training)
    return SweepResult(
        metric=evaluate.name,
        higher_is_better=evaluate.higher_is_better,
        reference=reference,
        points=tuple(points),
        skipped=tuple(skipped),
    )
