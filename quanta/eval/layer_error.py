"""Per-layer error of a quantized model against its float original: output SQNR/MSE and weight SQNR.

The same inputs run through both models; forward hooks on the modules that share a qualified name record each
layer's output. Errors are accumulated over all batches as sums (signal energy, noise energy, element count) in
float64, so the result does not depend on how the data is batched and no activations are kept between batches.
Each layer sees the quantized model's own (already perturbed) input, so the numbers show how error builds up
through the network, which is what the model's accuracy depends on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.nn.base import QuantModule
from quanta.primitives.metrics import sqnr_db

__all__ = ["LayerError", "layer_errors"]


@dataclass(frozen=True)
class LayerError:
    """One layer's error: output SQNR (dB) and MSE over every element of every batch, and the weight's SQNR.

    ``weight_sqnr_db`` is ``None`` for a module that holds no packed weight in the quantized model.
    """

    name: str
    kind: str
    output_sqnr_db: float
    output_mse: float
    weight_sqnr_db: float | None


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a module's output, in order (a tensor, or the tensors of a tuple/list such as an LSTM's)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _run(model: nn.Module, step: Any) -> None:
    if isinstance(step, dict):
        model(**step)
    elif isinstance(step, (tuple, list)):
        model(*step)
    else:
        model(step)


def _weight_sqnr(float_module: nn.Module, quant_module: nn.Module) -> float | None:
    """SQNR of every packed weight of ``quant_module`` together (an LSTM has several) against the float ones."""
    if not isinstance(quant_module, QuantModule):
        return None
    ref, got = [], []
    for name, qt in quant_module.qweights.items():
        weight = getattr(float_module, name, None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(qt.shape):
            return None
        reference = weight.detach().float()
        smoothing = quant_module.input_smoothing if name == "weight" else None
        if smoothing is not None:  # smoothinput quantized W diag(s), s = 1 / factors: compare with that
            reference = reference / smoothing
        ref.append(reference.reshape(-1))
        got.append(qt.dequantize().float().reshape(-1))
    return sqnr_db(torch.cat(ref), torch.cat(got)) if ref else None


def _accumulate(name: str, ref: list[list[torch.Tensor]], got: list[list[torch.Tensor]], acc: list[float]) -> None:
    """Add one batch's outputs (per call, per output tensor) to ``acc`` = [signal energy, noise energy, count]."""
    if len(ref) != len(got):
        raise QuantaError(
            f"module {name!r} ran {len(ref)} time(s) in the float model and {len(got)} in the quantized one; "
            "the two models must have the same structure."
        )
    for ref_call, got_call in zip(ref, got, strict=True):
        shapes = [tuple(t.shape) for t in ref_call], [tuple(t.shape) for t in got_call]
        if shapes[0] != shapes[1]:
            raise QuantaError(f"module {name!r} outputs {shapes[0]} in the float model but {shapes[1]} quantized.")
        for y, y_q in zip(ref_call, got_call, strict=True):
            a, b = y.double(), y_q.double()
            acc[0] += float((a * a).sum())
            acc[1] += float(((a - b) ** 2).sum())
            acc[2] += a.numel()


def layer_errors(
    float_model: nn.Module,
    quant_model: nn.Module,
    inputs: Iterable[Any],
    names: Sequence[str] | None = None,
) -> list[LayerError]:
    """Per-layer output SQNR and MSE of ``quant_model`` against ``float_model`` on the same ``inputs``.

    Args:
        float_model: the float original (e.g. a ``copy.deepcopy`` taken before ``quanta.quantize``).
        quant_model: its quantized copy; modules are paired by qualified name.
        inputs: batches as for calibration: a tensor, a tuple of positional arguments or a dict of keyword
            arguments per step (use ``quanta.calib.inputs(loader)`` to drop labels).
        names: the modules to measure; default: every packed module of ``quant_model``, in model order.

    Returns:
        One :class:`LayerError` per name, in the order given. SQNR is ``10 log10(sum y^2 / sum (y - y_q)^2)`` over
        all outputs (``inf`` when identical); MSE is the mean of ``(y - y_q)^2``.

    Raises:
        QuantaError: a name missing from either model, no modules to measure, empty inputs, or a layer whose
            output shapes or number of calls differ between the two models.

    Example:
        >>> import copy, quanta
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        >>> q = quanta.quantize(copy.deepcopy(net), "w8a16")
        >>> [(e.name, e.output_sqnr_db > 30) for e in layer_errors(net, q, [torch.randn(32, 16)])]
        [('0', True), ('2', True)]
    """
    float_modules = dict(float_model.named_modules())
    quant_modules = dict(quant_model.named_modules())
    if names is None:
        names = [n for n, m in quant_modules.items() if isinstance(m, QuantModule)]
    if not names:
        raise QuantaError("the quantized model has no packed modules to compare; pass names=[...] to pick layers.")
    for name in names:
        for which, modules in (("float", float_modules), ("quantized", quant_modules)):
            if name not in modules:
                raise QuantaError(f"module {name!r} is not in the {which} model; pass names both models share.")

    # Per name, the outputs of the current batch: a list (one entry per call) of lists of tensors.
    captured: dict[str, dict[str, list[list[torch.Tensor]]]] = {"float": {}, "quant": {}}
    sums = {name: [0.0, 0.0, 0.0] for name in names}  # signal energy, noise energy, elements

    def recorder(side: str, name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured[side].setdefault(name, []).append([t.detach() for t in _tensors(output)])

        return hook

    handles = [float_modules[n].register_forward_hook(recorder("float", n)) for n in names]
    handles += [quant_modules[n].register_forward_hook(recorder("quant", n)) for n in names]
    batches = 0
    try:
        with torch.no_grad():
            for step in inputs:
                for side in captured.values():
                    side.clear()
                _run(float_model, step)
                _run(quant_model, step)
                batches += 1
                for name in names:
                    _accumulate(name, captured["float"].get(name, []), captured["quant"].get(name, []), sums[name])
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise QuantaError("the inputs are empty; pass at least one batch.")

    results = []
    for name in names:
        signal, noise, count = sums[name]
        if noise == 0.0:
            sqnr = math.inf
        elif signal == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(signal / noise)
        quant_module = quant_modules[name]
        results.append(
            LayerError(
                name=name,
                kind=type(quant_module).__name__,
                output_sqnr_db=sqnr,
                output_mse=noise / count if count else math.nan,
                weight_sqnr_db=_weight_sqnr(float_modules[name], quant_module),
            )
        )
    return results
