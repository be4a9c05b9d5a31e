"""Quantization-aware training: ``prepare_qat`` -> train with any PyTorch loop -> ``convert`` -> ``quanta.save``.

``prepare_qat(model, recipe)`` reads the same recipes and presets as ``quanta.quantize`` (``w4a4``, ``w8a8``,
``w4a16-g32``, ... with ``-lsq`` for learned step sizes) and switches every matched Linear / Conv1d / Conv2d, in
place, to its fake-quantized twin (:mod:`quanta.qat.modules`): float master weights, and quantizers whose
straight-through (or LSQ) gradients let the network adapt to its grid. ``convert(model)`` replaces each twin by the
packed module ``quanta.quantize`` would build, with the trained grids (weight codes, and the input ranges as static
activation scales): in eval mode its outputs equal the fake-quantized model's. The result saves, loads and runs on
the low-bit kernels like any PTQ model.

Not built yet (see the issue): BatchNorm folding during QAT, freezing observers at a chosen step, PACT, LSQ+'s
learned offset, binary / ternary / fixed-point QAT, dynamic activations.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from quanta.api import _plan
from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.integer import IntegerFormat
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule, quant_class_for
from quanta.nn.fastpath import disable_fused_fast_paths
from quanta.primitives.checks import check_finite
from quanta.qat.modules import QAT_TWINS, QATModule
from quanta.qat.quantizers import FormatInputQuantizer, WeightQuantizer, check_qat_scheme, input_quantizer
from quanta.recipe import Recipe, resolve_recipe

__all__ = ["QATModule", "convert", "prepare_qat"]

QAT_METHODS = ("rtn", "lsq")  # rtn: observed ranges with the straight-through estimator


def prepare_qat(model: nn.Module, recipe: Recipe | str | os.PathLike[str]) -> nn.Module:
    """Make ``model`` (in place, also returned) fake-quantized per ``recipe``, ready to train.

    Raises:
        QuantaError: the model is already quantized or prepared.
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
                f"{step.name}: method {rule.method!r} is post-training; QAT takes {' or '.join(QAT_METHODS)} "
                "(observed ranges, or '-lsq' for learned step sizes)."
            )
        learned = methods[0] == "lsq"
        assert rule.weight is not None
        # -lsq learns the steps of integer grids; binary / ternary / fixed-point weights keep their fitted scale
        weight_learned = learned and isinstance(rule.weight.fmt, IntegerFormat)
        check_qat_scheme(rule.weight, weight_learned)
        if rule.activation is not None:
            if rule.dynamic:
                raise UnsupportedError(f"{step.name}: QAT quantizes inputs statically; drop '-dyn'.")
            check_qat_scheme(rule.activation, learned)
        weight = step.module.weight
        assert isinstance(weight, torch.Tensor)
        check_finite(weight.detach(), f"the weight of {step.name}")
        act = rule.activation
        quantizers = (
            WeightQuantizer(weight, rule.weight, weight_learned),
            None if act is None else input_quantizer(act, learned),
        )
        plans.append((step, twin, quantizers))
    for step, twin, (weight_quantizer, inputs) in plans:
        module = step.module
        module.__class__ = twin  # the same object: parameters and optimizers built on them are kept
        module.add_module("weight_quantizer", weight_quantizer)
        module.add_module("input_quantizer", inputs)
    model.quanta_recipe = resolved.to_dict()  # type: ignore[assignment]
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every fake-quantized twin of ``model`` (in place, also returned) by its packed module.

    Raises:
        QuantaError: the model was never prepared with :func:`prepare_qat`.
    """
    twins = [(n, m) for n, m in model.named_modules() if isinstance(m, QATModule)]
    if not twins:
        raise QuantaError("the model has no QAT modules: prepare it with quanta.prepare_qat(model, recipe) first.")
    for name, module in twins:
        with torch.no_grad():
            qweight = module.weight_quantizer.qtensor(module._parameters["weight"])  # type: ignore[arg-type]
        inputs = module.input_quantizer
        module.__class__ = type(module).float_type  # type: ignore[assignment]  # back to the float layer the packed twin is built from
        quant_class = quant_class_for(module)
        assert quant_class is not None
        packed = quant_class.from_float_weights(module, {"weight": qweight})
        if isinstance(inputs, FormatInputQuantizer):
            packed.set_activation(inputs.scheme, dynamic=False, params=inputs.format_params())
        elif inputs is not None:
            scale, zero = inputs.qparams()
            packed.set_activation(inputs.scheme, dynamic=False, scale=scale, zero=zero)
        packed.train(module.training)
        model.set_submodule(name, packed)
    disable_fused_fast_paths(model)
    if int8_flow.can_flow(model):
        int8_flow.enable(model)
    return model
