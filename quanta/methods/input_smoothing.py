"""Input smoothing: SmoothQuant's per-channel scales for linear layers that no normalization feeds, kept by the
packed layer and applied to its input at run time.

SmoothQuant (:mod:`quanta.methods.smoothquant`) folds its scale ``s`` into the norm before a layer. A layer with no
such norm cannot absorb it there: the first layer of a model that reads raw features of different scales (a
control policy's observation: cart position +-2.4 m beside a pole angle +-0.2 rad; sensor or tabular inputs), or a
layer after a nonlinearity. Here the weight's columns are multiplied by ``s`` and the packed layer keeps ``1 / s``
(one float per input feature, ``QuantLinear.set_input_smoothing``) and multiplies its input by it before
quantizing it::

    W' = W diag(s),   x' = x / s,   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)   (alpha = 0.5)

so the function is unchanged and one per-tensor input grid covers every feature evenly (W8A8). The cost is one
elementwise multiply per call, as torchao's SmoothQuant linear pays at run time. Only ``nn.Linear`` layers are
smoothed; for layers fed by a norm, ``smoothquant`` needs no run-time multiply.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quanta import distributed
from quanta.errors import QuantaError, UnsupportedError
from quanta.methods.layers import VIEW_OF
from quanta.methods.registry import Method, TransformTarget, register_method
from quanta.methods.smoothing import run_steps
from quanta.methods.smoothquant import ALPHA, smoothquant_scales

__all__ = ["factors_of", "smooth_inputs"]

_KEY = "_quanta_input_smoothing"  # where a smoothed float layer keeps its input factors until it is packed


def factors_of(module: nn.Module) -> torch.Tensor | None:
    """The input factors ``1 / s`` this method gave the float layer ``module`` (the packed layer takes them)."""
    factors: torch.Tensor | None = module.__dict__.get(_KEY)
    return factors


def _scale_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    factors = factors_of(module)
    assert factors is not None
    x, *rest = args
    return (x * factors.to(x.dtype), *rest)


def smooth_inputs(model: nn.Module, layers: dict[str, nn.Linear], steps: list[Any], alpha: float = ALPHA) -> None:
    """Smooth the inputs of ``layers`` (names in ``model``) from their per-feature max |x| over ``steps``, in place.

    Each layer's weight columns are multiplied by ``s`` and a forward pre-hook multiplies its input by ``1 / s``,
    so the float model computes the same function (and later calibration observes the smoothed inputs).
    """
    absmax: dict[str, torch.Tensor] = {}

    def observe(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])
            seen = x.amax(dim=0) if x.numel() else torch.zeros(x.shape[-1])
            absmax[name] = torch.maximum(absmax[name], seen) if name in absmax else seen

        return hook

    handles = [layer.register_forward_pre_hook(observe(name)) for name, layer in layers.items()]
    run_steps(model, steps, handles)
    for name, layer in layers.items():
        local = absmax.get(name, torch.zeros(layer.in_features))
        act = distributed.combine_max(local) if distributed.active() else local
        if not bool((act > 0).any()):
            raise QuantaError(f"calibration never reached {name}; check that the data exercises the whole model.")
        s = smoothquant_scales(act, layer.weight.detach().abs().amax(dim=0).float(), alpha)
        s = s.to(layer.weight.dtype).float()  # the factors below undo exactly the scale the weight takes
        with torch.no_grad():
            layer.weight.mul_(s.to(layer.weight.dtype))
        previous = factors_of(layer)
        layer.__dict__[_KEY] = (1 / s) if previous is None else previous / s
        if previous is None:
            layer.register_forward_pre_hook(_scale_input)


def _transform(model: nn.Module, targets: dict[str, TransformTarget], steps: list[Any]) -> None:
    layers = {name: m for name in targets if isinstance(m := model.get_submodule(name), nn.Linear)}
    owners: dict[int, list[str]] = {}
    for pname, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(parameter.data_ptr(), []).append(pname)
    for name, layer in layers.items():
        if VIEW_OF in layer.__dict__:
            raise UnsupportedError(
                f"smoothinput smooths nn.Linear layers; {name} is a transformers Conv1D (GPT-2), whose packed module "
                "has no input factors. Use smoothquant there, or leave it out of the rule."
            )
        shared = [n for n in owners.get(layer.weight.data_ptr(), []) if n != f"{name}.weight"]
        if shared:
            raise UnsupportedError(
                f"smoothinput would rescale {name}.weight, which is tied to {', '.join(shared)}: the tied uses would "
                "change too. Leave the layer out of the rule (e.g. a tied lm_head) or untie the weights."
            )
    smooth_inputs(model, layers, steps)


register_method(
    Method(
        "smoothinput",
        "transform",
        "SmoothQuant's scales for linear layers no norm feeds (a model's first layer): 1/s applied to the input at "
        "run time",
        needs_data=True,
        transform=_transform,
        layers=(nn.Linear,),
    )
)
