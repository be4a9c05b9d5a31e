"""The fake-quantized state of the packed modules: what quantization-aware training trains.

``quanta.prepare_qat`` gives every matched layer the packed class ``quanta.quantize`` builds for it
(:class:`~quanta.nn.linear.QuantLinear`, ``QuantConv2d``, ``QuantLSTM``, ...) and puts that module in its
fake-quantized state (:func:`enter`):

- the float layer's own parameters (the same ``Parameter`` objects, so an optimizer built on them keeps working)
  are the master weights;
- a ``weight_quantizer`` (``weight_quantizers``, one per matrix, for the recurrent layers) and, when the recipe
  quantizes activations statically, an ``input_quantizer`` (:mod:`quanta.qat.quantizers`) are submodules, so
  their learned steps train and their state is in ``state_dict()``; dynamic (per-token) activations are
  fake-quantized by the module's own dynamic rule, the one it runs once packed;
- a :class:`FakeQuantization` (``module.fake_state``) computes the weights and input the forward pass sees.

:func:`pack` (``quanta.convert``) then quantizes each master weight with its trained grid into the packed
buffers, in place: the same object, now packed, whose outputs equal the fake-quantized ones in eval mode.

A convolution or linear layer followed by a BatchNorm trains with the BatchNorm folded in
(:mod:`quanta.qat.batchnorm`): its quantized weight is the folded one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from quanta.nn.base import QuantModule
from quanta.qat.batchnorm import fold_factor, folded_bias, normalises_with_running_stats
from quanta.qat.quantizers import FormatInputQuantizer, InputQuantizer, WeightQuantizer
from quanta.scheme import QScheme

__all__ = ["FakeQuantization", "enter", "pack"]

HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)
SINGLE = ("weight",)  # linear and convolution layers: one ``weight_quantizer``; recurrent ones: ``weight_quantizers``


@dataclass(eq=False)
class FakeQuantization:
    """The training state of one fake-quantized module (kept in its ``__dict__``: not a submodule, not a tensor).

    Attributes:
        weight_names: the master weights (parameters) this module quantizes.
        weight_scheme: their scheme (for the module's repr).
        input_scheme: the input's scheme, or ``None`` when inputs stay float.
        dynamic: inputs are quantized per token at run time (no input quantizer; the packed module's rule).
        batchnorm: the BatchNorm folded into this layer's weight while training (it stays where it is).
        calibrating: weights and inputs pass through unquantized (``prepare_qat`` observes the float model).
    """

    weight_names: tuple[str, ...]
    weight_scheme: QScheme
    input_scheme: QScheme | None = None
    dynamic: bool = False
    batchnorm: nn.Module | None = None
    calibrating: bool = False

    def quantizer(self, module: QuantModule, name: str) -> WeightQuantizer:
        """The quantizer of master weight ``name``."""
        found = module._modules["weight_quantizer" if self.weight_names == SINGLE else "weight_quantizers"]
        if self.weight_names != SINGLE:
            assert isinstance(found, nn.ModuleDict)
            found = found[name]
        assert isinstance(found, WeightQuantizer)
        return found

    def master(self, module: QuantModule, name: str) -> torch.Tensor:
        weight = module._parameters[name]
        assert weight is not None
        return weight

    def weight(self, module: QuantModule, name: str) -> torch.Tensor:
        weight = self.master(module, name)
        return weight if self.calibrating else self.quantizer(module, name)(weight)

    def quantize_input(self, module: QuantModule, x: torch.Tensor) -> torch.Tensor:
        quantizer = module._modules.get("input_quantizer")
        if quantizer is not None:
            return quantizer(x)  # it passes the input through while calibrating
        if self.dynamic and not self.calibrating:
            return module.quantize_input_packed(x)  # per token, exactly as packed, straight-through gradient
        return x

    def forward(self, module: QuantModule, x: torch.Tensor) -> torch.Tensor:
        """Linear and convolution layers: ``module.compute(input, weight, bias)`` on what quantization makes of them."""
        compute = module.compute
        bias = module._parameters.get("bias")
        x = self.quantize_input(module, x)
        bn = self.batchnorm
        if bn is None:
            return compute(x, self.weight(module, "weight"), bias)
        # Simulated folding (Jacob et al. 2018; Krishnamoorthi 2018): quantize the weight scaled by
        # gamma / sqrt(running_var + eps). With running statistics (eval, or frozen) this layer computes the folded
        # layer itself, exactly as the packed module computes it, and the BatchNorm passes through; with batch
        # statistics the scale is undone on the output so the BatchNorm that follows sees what it would unfolded.
        weight = self.master(module, "weight")
        factor = fold_factor(bn)
        scaled = weight * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
        folded_weight = scaled if self.calibrating else self.quantizer(module, "weight")(scaled)
        if normalises_with_running_stats(bn):
            return compute(x, folded_weight, folded_bias(bias, bn))
        y = compute(x, folded_weight, None)
        y = y / factor.reshape((1, -1) + (1,) * (y.dim() - 2))
        return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.dim() - 2))

    def __repr__(self) -> str:
        text = f"fake-quantized, weight={self.weight_scheme}"
        if self.input_scheme is not None:
            text += f", input={self.input_scheme}{' per token' if self.dynamic else ''}"
        return text + (", BatchNorm folded" if self.batchnorm is not None else "")


def enter(
    packed: QuantModule,
    float_module: nn.Module,
    quantizers: Mapping[str, WeightQuantizer],
    input_quantizer: InputQuantizer | FormatInputQuantizer | None,
    input_scheme: QScheme | None = None,
    dynamic: bool = False,
    batchnorm: nn.Module | None = None,
) -> QuantModule:
    """Put ``packed`` (built from ``float_module`` by its class) in the fake-quantized state, in place.

    Its packed weights are dropped; ``float_module``'s parameters (the same objects) become its master weights and
    biases, and the quantizers its submodules.
    """
    names = tuple(quantizers)
    packed._unpack_for_training()
    for name, parameter in float_module._parameters.items():
        if parameter is not None:
            setattr(packed, name, parameter)  # registers it: the float layer's parameter itself, not a copy
    for hooks in HOOKS:  # hooks registered on the float layer keep running (their handles stay valid)
        setattr(packed, hooks, getattr(float_module, hooks))
    order = [n for n in float_module._parameters if n in packed._parameters]  # named_parameters() as in float
    packed._parameters = {n: packed._parameters[n] for n in [*order, *packed._parameters] if n in packed._parameters}
    if names == SINGLE:
        packed.add_module("weight_quantizer", quantizers["weight"])
    else:
        packed.add_module("weight_quantizers", nn.ModuleDict(dict(quantizers)))
    packed.add_module("input_quantizer", input_quantizer)
    if dynamic:
        assert input_scheme is not None
        packed.act_scheme, packed.act_dynamic = input_scheme, True
    scheme = next(iter(quantizers.values())).scheme
    packed.__dict__["_fake_state"] = FakeQuantization(names, scheme, input_scheme, dynamic, batchnorm)
    packed.train(float_module.training)
    return packed


def pack(module: QuantModule) -> QuantModule:
    """Quantize ``module``'s master weights with their trained grids into its packed buffers, in place.

    A folded BatchNorm is folded for good (the bias becomes the folded bias); the caller replaces the BatchNorm
    itself. Biases become frozen copies, as in a module ``quanta.quantize`` packs.
    """
    state = module.fake_state
    assert isinstance(state, FakeQuantization)
    bn = state.batchnorm
    with torch.no_grad():
        qweights = {}
        for name in state.weight_names:
            weight = state.master(module, name)
            if bn is not None:
                weight = weight * fold_factor(bn).reshape((-1,) + (1,) * (weight.dim() - 1))
            qweights[name] = state.quantizer(module, name).qtensor(weight)
        biases = {
            name: (folded_bias(p, bn) if bn is not None and name == "bias" else p).detach().clone()
            for name, p in module._parameters.items()
            if p is not None and name not in state.weight_names
        }
        if bn is not None and "bias" not in biases:
            biases["bias"] = folded_bias(None, bn).detach().clone()
    inputs = module._modules.get("input_quantizer")
    for name in state.weight_names:
        del module._parameters[name]
    for attr in ("weight_quantizer", "weight_quantizers", "input_quantizer"):
        module._modules.pop(attr, None)
    for name, value in biases.items():
        module._parameters.pop(name, None)
        module.__dict__.pop(name, None)
        setattr(module, name, nn.Parameter(value, requires_grad=False))
    del module.__dict__["_fake_state"]
    module.act_scheme, module.act_dynamic = None, False
    for name, qweight in qweights.items():
        module._set_qweight(qweight, name)
    module._after_repack()
    if isinstance(inputs, FormatInputQuantizer):
        module.set_activation(inputs.scheme, dynamic=False, params=inputs.format_params())
    elif isinstance(inputs, InputQuantizer):
        scale, zero = inputs.qparams()
        module.set_activation(inputs.scheme, dynamic=False, scale=scale, zero=zero)
    elif state.dynamic:
        assert state.input_scheme is not None
        module.set_activation(state.input_scheme, dynamic=True)
    return module
