"""Quantization-aware training: ``prepare_qat`` -> train with any PyTorch loop -> ``convert`` -> ``quanta.save``.

``prepare_qat(model, recipe, calib=None)`` reads the same recipes and presets as ``quanta.quantize`` (``w4a4``,
``w8a8``, ``w4a16-g32``, ``w8a8-dyn``, ``ternary``, ``bnn``, ``q4.4``, ... with ``-lsq``, ``-lsqplus`` or ``-pact`` for
learned ranges) and replaces every matched Linear / Conv1d / Conv2d / LSTM / GRU by the quantized module class
``quanta.quantize`` builds for it (``QuantLinear``, ``QuantConv2d``, ``QuantLSTM``, ...) in its fake-quantized
state (:mod:`quanta.qat.fake_state`): the float layer's own parameters as master weights, and quantizers whose
straight-through (or learned) gradients let the network adapt to its grid. A layer followed by a BatchNorm trains
with the BatchNorm folded in (:mod:`quanta.qat.batchnorm`). ``calib`` initialises the input ranges as PTQ
calibration does (otherwise the first training batch does). :func:`freeze` stops the observers and BatchNorm
statistics, e.g. for the last epochs. ``convert(model)`` packs each of those modules in place with its trained
grids: in eval mode its outputs equal the fake-quantized model's. The result saves, loads and runs on the low-bit
kernels like any PTQ model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from quanta import calib as calib_module
from quanta.api import _plan
from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.integer import IntegerFormat
from quanta.methods.bn_fold import batchnorm_pairs
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule, fake_quantized_modules, qat_types, quant_class_for
from quanta.nn.fastpath import disable_fused_fast_paths
from quanta.primitives.checks import check_finite
from quanta.qat import fake_state
from quanta.qat.batchnorm import fold_factor, freeze_batchnorm, mark_folded, unfreeze_batchnorm
from quanta.qat.fake_state import FakeQuantization
from quanta.qat.quantizers import (
    LEARNED_STEPS,
    QAT_METHODS,
    FormatInputQuantizer,
    InputQuantizer,
    WeightQuantizer,
    check_qat_scheme,
    input_quantizer,
)
from quanta.recipe import Recipe, resolve_recipe

__all__ = ["FakeQuantization", "convert", "fake_quantized_modules", "freeze", "is_prepared", "prepare_qat"]


def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` has modules in the fake-quantized state (prepared by :func:`prepare_qat`, not converted)."""
    return bool(fake_quantized_modules(model))


def prepare_qat(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str],
    calib: Iterable[Any] | None = None,
    fold_bn: bool = True,
) -> nn.Module:
    """Make ``model`` (in place, also returned) fake-quantized per ``recipe``, ready to train.

    Every matched layer is replaced by the module class ``quanta.quantize`` builds for it, in its fake-quantized
    state; its master weights are the float layer's parameters themselves.

    Args:
        model: a float model.
        recipe: a Recipe, preset name or recipe JSON path; the method slot is ``rtn`` (observed ranges, the
            default), ``lsq``, ``lsqplus`` or ``pact``; ``-dyn`` quantizes inputs per token at run time.
        calib: optional calibration inputs (as ``quanta.quantize`` takes them) that initialise every static input
            range, observed in eval mode on the float activations, as PTQ calibrates; without it the first training
            batch does. Under DistributedDataParallel, calibrate every rank on the same data before wrapping.
        fold_bn: train each Conv/Linear followed by a BatchNorm with the BatchNorm folded into its weight.

    Raises:
        QuantaError: the model is already quantized or prepared, or the calibration data is empty or misses a
            quantized layer.
        UnsupportedError: a matched module type, scheme or method with no QAT form (named), checked before any
            module changes.
    """
    if any(isinstance(m, QuantModule) for m in model.modules()):
        raise QuantaError(
            "the model is already quantized or prepared for QAT; prepare_qat takes a float model (convert a "
            "prepared one with quanta.convert)."
        )
    resolved = resolve_recipe(recipe)
    steps, _ = _plan(model, resolved)
    pairs = dict(batchnorm_pairs(model)) if fold_bn else {}
    plans = []
    for step in steps:  # everything is checked, and every packed module built, before the model changes
        rule = step.rule
        quant_class = quant_class_for(step.module)
        if quant_class is None or not quant_class.supports_qat:
            raise UnsupportedError(
                f"{step.name} ({type(step.module).__name__}) has no QAT form yet: QAT trains "
                f"{', '.join(t.__name__ for t in qat_types())}; skip it in the recipe."
            )
        methods = rule.method.split("_")
        if len(methods) != 1 or methods[0] not in QAT_METHODS:
            raise UnsupportedError(
                f"{step.name}: method {rule.method!r} is post-training; QAT takes {', '.join(QAT_METHODS)} "
                "(observed ranges, '-lsq' / '-lsqplus' for learned steps, '-pact' for learned input clipping)."
            )
        method = methods[0]
        assert rule.weight is not None
        # learned steps apply to integer grids; binary / ternary / fixed-point weights keep their fitted scale,
        # and PACT clips inputs only
        integer = isinstance(rule.weight.fmt, IntegerFormat)
        weight_method = method if method in LEARNED_STEPS and integer else "rtn"
        check_qat_scheme(rule.weight, weight_method)
        act = rule.activation
        if act is not None:
            if rule.dynamic and method == "pact":
                raise UnsupportedError(
                    f"{step.name}: PACT learns a static clipping level; drop '-dyn' or use '-lsq' for the weights."
                )
            if rule.dynamic and not act.is_integer:
                raise UnsupportedError(f"{step.name}: {act} inputs are quantized statically; drop '-dyn'.")
            check_qat_scheme(act, method if isinstance(act.fmt, IntegerFormat) and not rule.dynamic else "rtn")
        elif method == "pact":
            raise UnsupportedError(
                f"{step.name}: PACT learns activation ranges; quantize activations (e.g. w4a4-pact)."
            )
        bn = model.get_submodule(pairs[step.name]) if step.name in pairs else None
        weights = {}
        for name in quant_class.weight_names(step.module):
            weight = getattr(step.module, name)
            assert isinstance(weight, torch.Tensor)
            check_finite(weight.detach(), f"the weight {name} of {step.name}")
            weights[name] = weight.detach()
        if bn is not None:
            with torch.no_grad():
                factor = fold_factor(bn)
                weights["weight"] = weights["weight"] * factor.reshape((-1,) + (1,) * (weights["weight"].dim() - 1))
        quantizers = {name: WeightQuantizer(w, rule.weight, weight_method) for name, w in weights.items()}
        with torch.no_grad():  # the packed module is built as quanta.quantize builds it, then unpacked
            packed = quant_class.from_float_weights(
                step.module, {n: q.qtensor(weights[n]) for n, q in quantizers.items()}
            )
        inputs = None if act is None or rule.dynamic else input_quantizer(act, method)
        plans.append((step, packed, quantizers, inputs, bn))
    for step, packed, quantizers, inputs, bn in plans:
        act = step.rule.activation
        fake_state.enter(packed, step.module, quantizers, inputs, act, step.rule.dynamic and act is not None, bn)
        if bn is not None:
            mark_folded(bn)
        for name in _names_of(model, step.module):  # a layer registered under several names is one layer
            model.set_submodule(name, packed)
    disable_fused_fast_paths(model)
    model.quanta_recipe = resolved.to_dict()  # type: ignore[assignment]
    if calib is not None:
        _calibrate_inputs(model, calib)
    return model


def _names_of(model: nn.Module, module: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules(remove_duplicate=False) if m is module]


def _states(model: nn.Module) -> list[FakeQuantization]:
    states = []
    for _, module in fake_quantized_modules(model):
        state = module.fake_state
        assert isinstance(state, FakeQuantization)
        states.append(state)
    return states


def _calibrate_inputs(model: nn.Module, calib: Iterable[Any]) -> None:
    """Initialise every input quantizer from ``calib`` run through the float model (eval mode, no gradients)."""
    quantizers = [m for m in model.modules() if isinstance(m, (InputQuantizer, FormatInputQuantizer))]
    states = _states(model)
    was_training = model.training
    for q in quantizers:
        q.begin_calibration()
    for state in states:
        state.calibrating = True
    try:
        model.eval()
        calib_module.run(model, calib)  # no gradients; an empty calibration set raises QuantaError
    except BaseException:
        for q in quantizers:
            q.abort_calibration()
        raise
    finally:
        model.train(was_training)
        for state in states:
            state.calibrating = False
    for q in quantizers:
        q.end_calibration()


def _check_prepared(model: nn.Module) -> None:
    if not is_prepared(model):
        raise QuantaError("the model has no QAT modules: prepare it with quanta.prepare_qat(model, recipe) first.")


def freeze(model: nn.Module, observers: bool = True, batchnorm: bool = True) -> nn.Module:
    """Stop updating observed input ranges (``observers``) and BatchNorm running statistics (``batchnorm``, which
    then normalise with them in training too) of a prepared model, in place; learned steps keep training.
    Typically called for the last part of training (``quanta.train.fit(..., freeze_at=step)``).

    Raises:
        QuantaError: the model was never prepared with :func:`prepare_qat`.
    """
    _check_prepared(model)
    if observers:
        for m in model.modules():
            if isinstance(m, (InputQuantizer, FormatInputQuantizer)):
                m.freeze()
    if batchnorm:
        freeze_batchnorm(model)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Pack every fake-quantized module of ``model`` in place (also returned) with its trained grids.

    Raises:
        QuantaError: the model was never prepared with :func:`prepare_qat`.
    """
    _check_prepared(model)
    names = {id(m): n for n, m in model.named_modules()}
    unfreeze_batchnorm(model)
    for _, module in fake_quantized_modules(model):
        state = module.fake_state
        assert isinstance(state, FakeQuantization)
        bn = state.batchnorm
        fake_state.pack(module)
        if bn is not None:
            model.set_submodule(names[id(bn)], nn.Identity())
    disable_fused_fast_paths(model)
    if int8_flow.can_flow(model):
        int8_flow.enable(model)
    return model
