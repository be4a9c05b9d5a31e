"""``quanta.quantize``: orchestration only. Plan every module, validate everything, then swap modules.

Nothing is mutated until the whole plan is valid, so a bad recipe or an unsupported target leaves the model as
it was.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quanta import calib as calib_module
from quanta import distributed
from quanta.codec import quantize_tensor
from quanta.errors import QuantaError, UnsupportedError
from quanta.methods import input_smoothing
from quanta.methods.pipeline import MethodPlan, Target
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule, fake_quantized_modules, quant_class_for
from quanta.nn.fastpath import disable_fused_fast_paths
from quanta.nn.linear import QuantLinear
from quanta.observers import Observer, get_observer
from quanta.primitives.checks import check_finite
from quanta.recipe import Recipe, Rule, resolve_recipe
from quanta.tensor import QTensor

__all__ = ["model_nbytes", "quantize", "quantize_resolved"]


@dataclass(frozen=True)
class _Step:
    name: str
    module: nn.Module
    rule: Rule
    quant_class: type[QuantModule]


def _plan(model: nn.Module, recipe: Recipe) -> tuple[list[_Step], list[str]]:
    """The modules to swap, in order, and the ones a rule matched that have no quantized twin."""
    steps: list[_Step] = []
    unsupported: list[str] = []
    # A twin replaces the whole subtree (e.g. MultiheadAttention and its out_proj). named_modules() is pre-order,
    # so a module's descendants follow it directly: the last swapped name is the only one they can sit under.
    swapped = "\0"
    for name, module in model.named_modules():
        if not name or isinstance(module, QuantModule) or name.startswith(f"{swapped}."):
            continue
        rule = recipe.rule_for(name, module)
        if rule is None or rule.skip or (rule.weight is None and rule.activation is None):
            continue
        quant_class = quant_class_for(module)
        if quant_class is None:
            # Only modules with matrix weights are worth reporting (norms and biases stay float by design).
            if any(p.dim() >= 2 for p in module.parameters(recurse=False)) and not list(module.children()):
                unsupported.append(f"{name} ({type(module).__name__})")
            continue
        steps.append(_Step(name, module, rule, quant_class))
        swapped = name
    if unsupported:
        warnings.warn(
            f"no quantized twin for {len(unsupported)} module(s), left in float: {', '.join(unsupported[:8])}",
            stacklevel=3,
        )
    if recipe.keep_first_last and len(steps) > 2:
        steps = steps[1:-1]
    return steps, unsupported


def _validate(
    model: nn.Module, recipe: Recipe, steps: list[_Step], from_preset: bool, calib: Iterable[Any] | None
) -> MethodPlan:
    names = [n for n, _ in model.named_modules() if n]
    if not from_preset:
        for rule in recipe.rules:
            if not any(rule.matches(n, m) for n, m in model.named_modules() if n):
                close = difflib.get_close_matches(rule.pattern, names, n=5, cutoff=0.3)
                raise QuantaError(
                    f"recipe rule pattern={rule.pattern!r} type={rule.module_type!r} matches no module; "
                    f"closest names: {close or names[:5]}."
                )
    for step in steps:
        rule = step.rule
        if rule.weight is None:
            raise UnsupportedError(
                f"{step.name}: quantizing activations with float weights is not supported yet; give a weight scheme."
            )
        act = rule.activation
        if act is not None and act.granularity != "tensor":
            raise UnsupportedError(
                f"activation scheme {act} (for {step.name}) is per {act.granularity}: activations are quantized per "
                "tensor (static) or per token (dynamic, e.g. w8a8-dyn); drop the granularity from the scheme."
            )
        if act is not None and rule.dynamic and not act.is_integer:
            raise UnsupportedError(
                f"dynamic activations are integer only; {act} (for {step.name}) is calibrated statically: "
                "drop '-dyn' / dynamic=True."
            )
        for weight_name in step.quant_class.weight_names(step.module):
            weight = step.quant_class.float_weight(step.module, weight_name)
            if not isinstance(weight, torch.Tensor):
                raise UnsupportedError(f"{step.name} has no tensor {weight_name!r} to quantize.")
            if not weight.is_meta:  # an offloaded block's weights are checked when they are read
                check_finite(weight.detach(), f"the {weight_name} of {step.name}")
    # Unknown methods, schemes a method cannot use and methods that need data without calib fail here.
    rule_index = {id(rule): i for i, rule in enumerate(recipe.rules)}
    targets = [Target(s.name, s.module, s.rule.method, s.rule.weight, rule_index.get(id(s.rule), -1)) for s in steps]
    return MethodPlan(targets, calib)


def _calibrate(model: nn.Module, steps: list[_Step], calib: Iterable[Any] | None) -> dict[str, Observer]:
    """Observe the inputs of every module whose rule quantizes activations statically."""
    static = [
        s
        for s in steps
        if s.rule.activation is not None and not s.rule.dynamic and s.rule.activation.fmt.param_spec(s.rule.activation)
    ]
    if not static:
        return {}
    if calib is None:
        raise QuantaError(
            f"{static[0].rule.activation} activations are quantized statically and need calibration data: "
            "pass calib=... (an iterable of inputs), or use dynamic activations (e.g. w8a8-dyn)."
        )
    observers: dict[str, Observer] = {}
    handles = []
    for step in static:
        assert step.rule.activation is not None
        act = step.rule.activation
        # Binary/ternary activation scales are means of |x|, so they need a sample of the data, not only its range.
        default = "percentile" if act.format in ("binary", "ternary") else "minmax"
        observer = get_observer(act.observer or default)
        if not observer.combinable:  # across processes only exact merges are allowed (minmax)
            distributed.refuse(f"static activation ranges of the {observer.name} observer")
        observers[step.name] = observer

        def hook(_module: nn.Module, args: tuple[Any, ...], observer: Observer = observer) -> None:
            if args and isinstance(args[0], torch.Tensor):
                observer.update(args[0])

        handles.append(step.module.register_forward_pre_hook(hook))
    try:
        calib_module.run(model, calib)
    finally:
        for handle in handles:
            handle.remove()
    if distributed.active():
        for observer in observers.values():
            observer.combine_ranks()  # every rank ends with the ranges of all the calibration data
    for name, observer in observers.items():
        if not hasattr(observer, "min_"):
            raise QuantaError(f"calibration never reached {name}; check that the data exercises the whole model.")
    return observers


def quantize(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str],
    calib: Iterable[Any] | None = None,
    *,
    progress: bool = False,
) -> nn.Module:
    """Quantize ``model`` in place (and return it): every module a recipe rule matches becomes its packed twin.

    Args:
        model: any ``nn.Module``; no tracing is needed.
        recipe: a :class:`~quanta.recipe.Recipe`, a preset name (``"w8a16"``, ``"w4a16-g128"``, ``"nf4-g64"``) or
            the path of a recipe JSON file.
        calib: calibration inputs, for recipes that need data (none of the weight-only RTN recipes do).
        progress: show a progress bar.

    Returns:
        ``model``, with modules swapped.

    Raises:
        SchemeError: unknown preset or scheme. UnsupportedError: a method or activation scheme not available.
        NonFiniteError: NaN/Inf in a weight (the message names the module). QuantaError: a rule of a custom
        recipe that matches no module.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        >>> m = quantize(m, "w4a16-g32")
        >>> type(m[0]).__name__, str(m[0].weight_scheme)
        ('QuantLinear', 'int4:g32:asym:sf16')
    """
    from_preset = isinstance(recipe, str) and not recipe.endswith(".json")
    return quantize_resolved(model, resolve_recipe(recipe), calib, progress=progress, check_rules=not from_preset)


def quantize_resolved(
    model: nn.Module,
    resolved: Recipe,
    calib: Iterable[Any] | None = None,
    *,
    progress: bool = False,
    check_rules: bool = True,
) -> nn.Module:
    """:func:`quantize` with the recipe already resolved; ``check_rules=False`` lets rules match no module here
    (presets' generic rules, or a part of a model quantized on its own, as the sequential LM pipeline does)."""
    if fake_quantized_modules(model):
        raise QuantaError(
            "the model is prepared for QAT (fake-quantized): pack it with quanta.convert(model), or quantize the "
            "float model instead."
        )
    steps, unsupported = _plan(model, resolved)
    fingerprint = calib_module.Fingerprint()
    if calib is not None:
        calib = fingerprint.wrap(calib)  # hashed as it is read, for quanta.json's provenance
    plan = _validate(model, resolved, steps, not check_rules, calib)
    calib = plan.calib  # read once into a list when methods make several passes
    plan.before(model)  # transforms (cle) on the float model; rounding methods gather their statistics
    observers = _calibrate(model, steps, calib)  # runs the float model; no module is swapped yet
    done: dict[int, QTensor] = {}  # tied weights (one Parameter in several modules) are quantized once
    iterator: Iterable[_Step] = steps
    if progress:
        from rich.progress import track

        iterator = track(steps, description="quantizing")
    for step in iterator:
        assert step.rule.weight is not None
        qweights: dict[str, QTensor] = {}
        for weight_name in step.quant_class.weight_names(step.module):
            weight = step.quant_class.float_weight(step.module, weight_name)
            assert weight is not None  # checked by _validate
            qweight = done.get(id(weight))
            if qweight is None:
                axis = step.quant_class.quant_axis(weight_name)
                with plan.sharing(step.name):
                    if plan.rounds_weight(step.name, step.module, weight_name, axis):
                        qweight = plan.quantize_weight(step.name, step.module, step.rule.weight)
                    else:
                        qweight = quantize_tensor(weight.detach(), step.rule.weight, axis=axis)
                done[id(weight)] = qweight
            qweights[weight_name] = qweight
        packed = step.quant_class.from_float_weights(step.module, qweights)
        smoothing = input_smoothing.factors_of(step.module)
        if smoothing is not None:  # the smoothinput method's 1 / s
            if not isinstance(packed, QuantLinear):
                raise UnsupportedError(
                    f"{step.name}: input smoothing needs a QuantLinear, not {type(packed).__name__}."
                )
            packed.set_input_smoothing(smoothing)
        act = step.rule.activation
        if act is not None:
            if step.rule.dynamic:
                packed.set_activation(act, dynamic=True)
            elif not act.fmt.param_spec(act):  # a fixed grid (fixed point): nothing to calibrate
                packed.set_activation(act, dynamic=False, params={})
            elif act.is_integer:
                scale, zero = observers[step.name].qparams(act)
                packed.set_activation(act, dynamic=False, scale=scale, zero=zero)
            else:
                packed.set_activation(act, dynamic=False, params=observers[step.name].format_params(act))
        model.set_submodule(step.name, packed)
    plan.after(model)  # corrections (bc) on the quantized model
    disable_fused_fast_paths(model)
    if int8_flow.can_flow(model):
        int8_flow.enable(model)  # int8 activations pass between the int8 convolutions of each call
    # Remembered for quanta.save: the recipe that produced this model, as plain JSON-able data.
    model.quanta_recipe = resolved.to_dict()  # type: ignore[assignment]
    model.quanta_provenance = {  # type: ignore[assignment]
        "calibration_sha256": fingerprint.hexdigest() if fingerprint.steps else None,
        "calibration_steps": fingerprint.steps,
        "torch_seed": torch.initial_seed(),
    }
    model.quanta_left_in_float = unsupported  # type: ignore[assignment]  # reported in quanta.json
    return model


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored, shared (tied) tensors counted once, no file headers, plus
    what a module holds outside tensors (``module.extra_nbytes()``, e.g. a kernel's packed weight object)."""
    seen: set[tuple[int, int, torch.dtype]] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    # Storage a kernel holds outside tensors (e.g. a packed weight object) is reported by the module itself.
    for module in model.modules():
        extra = getattr(module, "extra_nbytes", None)
        if callable(extra):
            total += int(extra())
    return total
