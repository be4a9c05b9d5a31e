"""Quantization-aware training: ``prepare_qat`` -> train with any PyTorch loop -> ``convert`` -> ``quanta.save``.

``prepare_qat(model, recipe, calib=None)`` reads the same recipes and presets as ``quanta.quantize`` (``w4a4``,
``w8a8``, ``w4a16-g32``, ``ternary``, ``bnn``, ``q4.4``, ... with ``-lsq``, ``-lsqplus`` or ``-pact`` for learned
ranges) and switches every matched Linear / Conv1d / Conv2d / LSTM / GRU, in place, to its fake-quantized twin
(:mod:`quanta.qat.modules`): float master weights, and quantizers whose straight-through (or learned) gradients let
the network adapt to its grid. A layer followed by a BatchNorm trains with the BatchNorm folded in
(:mod:`quanta.qat.batchnorm`). ``calib`` initialises the input ranges as PTQ calibration does (otherwise the first
training batch does). :func:`freeze` stops the observers and BatchNorm statistics, e.g. for the last epochs.
``convert(model)`` replaces each twin by the packed module ``quanta.quantize`` would build, with the trained grids:
in eval mode its outputs equal the fake-quantized model's. The result saves, loads and runs on the low-bit
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
from quanta.nn.base import QuantModule, quant_class_for
from quanta.nn.fastpath import disable_fused_fast_paths
from quanta.primitives.checks import check_finite
from quanta.qat.batchnorm import fold_factor, folded_bias, freeze_batchnorm, mark_folded, unfreeze_batchnorm
from quanta.qat.modules import QAT_TWINS, QATModule
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

__all__ = ["QATModule", "convert", "freeze", "prepare_qat"]


def prepare_qat(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str],
    calib: Iterable[Any] | None = None,
    fold_bn: bool = True,
) -> nn.Module:
    """Make ``model`` (in place, also returned) fake-quantized per ``recipe``, ready to train.

    Args:
        model: a float model.
        recipe: a Recipe, preset name or recipe JSON path; the method slot is ``rtn`` (observed ranges, the
            default), ``lsq``, ``lsqplus`` or ``pact``.
        calib: optional calibration inputs (as ``quanta.quantize`` takes them) that initialise every input range,
            observed in eval mode on the float activations, as PTQ calibrates; without it the first training
            batch does. Under DistributedDataParallel, calibrate every rank on the same data before wrapping.
        fold_bn: train each Conv/Linear followed by a BatchNorm with the BatchNorm folded into its weight.

    Raises:
        QuantaError: the model is already quantized or prepared, or the calibration data is empty or misses a
            quantized layer.
        UnsupportedError: a matched module type, scheme or method with no QAT form (named), checked before any
            module changes.
    """
    if any(isinstance(m, (QuantModule, QATModule)) for m in model.modules()):
        raise QuantaError(
            "the model is already quantized or prepared for QAT; prepare_qat takes a float model (convert a "
            "prepared one with quanta.convert)."
        )
    resolved = resolve_recipe(recipe)
    steps, _ = _plan(model, resolved)
    plans = []
    for step in steps:  # everything is checked before anything changes
        rule = step.rule
        twin = QAT_TWINS.get(type(step.module))
        if twin is None:
            raise UnsupportedError(
                f"{step.name} ({type(step.module).__name__}) has no QAT form yet: QAT trains "
                f"{', '.join(t.__name__ for t in QAT_TWINS)}; skip it in the recipe."
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
            if rule.dynamic:
                raise UnsupportedError(f"{step.name}: QAT quantizes inputs statically; drop '-dyn'.")
            check_qat_scheme(act, method if isinstance(act.fmt, IntegerFormat) else "rtn")
        elif method == "pact":
            raise UnsupportedError(
                f"{step.name}: PACT learns activation ranges; quantize activations (e.g. w4a4-pact)."
            )
        quant_class = quant_class_for(step.module)
        assert quant_class is not None
        names = quant_class.weight_names(step.module)
        weights = {}
        for name in names:
            weight = getattr(step.module, name)
            assert isinstance(weight, torch.Tensor)
            check_finite(weight.detach(), f"the weight {name} of {step.name}")
            weights[name] = weight.detach()
        plans.append((step, twin, names, weights, weight_method, method))
    pairs = dict(batchnorm_pairs(model)) if fold_bn else {}
    for step, twin, names, weights, weight_method, method in plans:
        module = step.module
        bn = model.get_submodule(pairs[step.name]) if step.name in pairs else None
        module.__class__ = twin  # the same object: parameters and optimizers built on them are kept
        if bn is not None:
            module.fold_batchnorm(bn)  # type: ignore[operator]
            mark_folded(bn)
            with torch.no_grad():
                factor = fold_factor(bn)
                weights["weight"] = weights["weight"] * factor.reshape((-1,) + (1,) * (weights["weight"].dim() - 1))
        scheme = step.rule.weight
        assert scheme is not None
        quantizers = {name: WeightQuantizer(weights[name], scheme, weight_method) for name in names}
        if names == ("weight",):
            module.add_module("weight_quantizer", quantizers["weight"])
        else:
            module.add_module("weight_quantizers", nn.ModuleDict(quantizers))
        act = step.rule.activation
        module.add_module("input_quantizer", None if act is None else input_quantizer(act, method))
    model.quanta_recipe = resolved.to_dict()  # type: ignore[assignment]
    if calib is not None:
        _calibrate_inputs(model, calib)
    return model


def _calibrate_inputs(model: nn.Module, calib: Iterable[Any]) -> None:
    """Initialise every input quantizer from ``calib`` run through the float model (eval mode, no gradients)."""
    quantizers = [m for m in model.modules() if isinstance(m, (InputQuantizer, FormatInputQuantizer))]
    twins = [m for m in model.modules() if isinstance(m, QATModule)]
    was_training = model.training
    for q in quantizers:
        q.begin_calibration()
    for twin in twins:
        twin.use_float_weights(True)
    try:
        model.eval()
        calib_module.run(model, calib)  # no gradients; an empty calibration set raises QuantaError
    except BaseException:
        for q in quantizers:
            q.abort_calibration()
        raise
    finally:
        model.train(was_training)
        for twin in twins:
            twin.use_float_weights(False)
    for q in quantizers:
        q.end_calibration()


def freeze(model: nn.Module, observers: bool = True, batchnorm: bool = True) -> nn.Module:
    """Stop updating observed input ranges (``observers``) and BatchNorm running statistics (``batchnorm``, which
    then normalise with them in training too) of a prepared model, in place; learned steps keep training.
    Typically called for the last part of training (``quanta.train.fit(..., freeze_at=step)``).

    Raises:
        QuantaError: the model was never prepared with :func:`prepare_qat`.
    """
    if not any(isinstance(m, QATModule) for m in model.modules()):
        raise QuantaError("the model has no QAT modules: prepare it with quanta.prepare_qat(model, recipe) first.")
    if observers:
        for m in model.modules():
            if isinstance(m, (InputQuantizer, FormatInputQuantizer)):
                m.freeze()
    if batchnorm:
        freeze_batchnorm(model)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every fake-quantized twin of ``model`` (in place, also returned) by its packed module.

    Raises:
        QuantaError: the model was never prepared with :func:`prepare_qat`.
    """
    twins = [(n, m) for n, m in model.named_modules() if isinstance(m, QATModule)]
    if not twins:
        raise QuantaError("the model has no QAT modules: prepare it with quanta.prepare_qat(model, recipe) first.")
    bn_names = {id(m): n for n, m in model.named_modules()}
    unfreeze_batchnorm(model)
    for name, module in twins:
        bn = module.folded_batchnorm
        with torch.no_grad():
            qweights = {}
            for weight_name, quantizer in module.weight_quantizer_items():
                parameter = module._parameters[weight_name]
                assert parameter is not None
                weight: torch.Tensor = parameter
                if bn is not None:
                    weight = weight * fold_factor(bn).reshape((-1,) + (1,) * (weight.dim() - 1))
                qweights[weight_name] = quantizer.qtensor(weight)
            bias = None if bn is None else folded_bias(module._parameters.get("bias"), bn).detach().clone()
        inputs = module.input_quantizer
        for attr in ("weight_quantizer", "weight_quantizers", "input_quantizer"):
            module._modules.pop(attr, None)
        module.fold_batchnorm(None)
        module.__class__ = type(module).float_type  # type: ignore[assignment]  # back to the float layer the packed twin is built from
        if bias is not None:
            module.bias = nn.Parameter(bias)
        quant_class = quant_class_for(module)
        assert quant_class is not None
        packed = quant_class.from_float_weights(module, qweights)
        if isinstance(inputs, FormatInputQuantizer):
            packed.set_activation(inputs.scheme, dynamic=False, params=inputs.format_params())
        elif inputs is not None:
            scale, zero = inputs.qparams()
            packed.set_activation(inputs.scheme, dynamic=False, scale=scale, zero=zero)
        packed.train(module.training)
        model.set_submodule(name, packed)
        if bn is not None:
            model.set_submodule(bn_names[id(bn)], nn.Identity())
    disable_fused_fast_paths(model)
    if int8_flow.can_flow(model):
        int8_flow.enable(model)
    return model
