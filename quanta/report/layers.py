"""The report's per-layer facts: scheme, method, kernel, bytes and weight error, and histograms of the worst layers.

The weight error is measured against the float model's weight of the same name when one is given: relative MSE
``sum (W - W_q)^2 / sum W^2`` and SQNR ``-10 log10`` of it. Without a float model only an estimate is possible: the
uniform-noise model of rounding, ``step^2 / 12`` per weight with ``step`` the stored scale, relative to the
dequantized weights' energy (integer formats only; ``None`` otherwise).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.nn.base import QuantModule
from quanta.tensor import QTensor

__all__ = ["HISTOGRAM_BINS", "histogram", "layer_rows", "method_for"]

HISTOGRAM_BINS = 80


def method_for(recipe: dict[str, Any] | None, name: str, float_type: str) -> str | None:
    """The method of the first recipe rule matching module ``name`` of float class ``float_type`` (as
    :meth:`quanta.recipe.Rule.matches` decides for the float module), or ``None`` without a recipe."""
    for rule in (recipe or {}).get("rules", []):
        if rule.get("module_type") not in (None, float_type):
            continue
        if fnmatch.fnmatchcase(name, str(rule.get("pattern", "*"))):
            return None if rule.get("skip") else str(rule.get("method", "rtn"))
    return None


def _float_weight(
    float_model: nn.Module | None, packed: QuantModule, name: str, weight_name: str, qt: QTensor
) -> torch.Tensor | None:
    """The float model's tensor that ``packed``'s weight ``weight_name`` was quantized from (``None``: no model)."""
    if float_model is None:
        return None
    try:
        module = float_model.get_submodule(name)
    except AttributeError as exc:
        raise QuantaError(f"the float model has no module {name!r}; pass the model the checkpoint came from.") from exc
    weight = None if isinstance(module, QuantModule) else type(packed).float_weight(module, weight_name)
    if isinstance(module, QuantModule) or not isinstance(weight, torch.Tensor) or weight.shape != qt.shape:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise QuantaError(
            f"the float model's {name}.{weight_name} ({type(module).__name__}) is {got}, not a float weight of shape "
            f"{tuple(qt.shape)}; pass the float model the checkpoint was quantized from."
        )
    reference = weight.detach().float()
    smoothing = packed.input_smoothing if weight_name == "weight" else None
    # smoothinput quantized W diag(s), s = 1 / factors: the grid's error is measured against that
    return reference if smoothing is None else reference / smoothing


def _estimated_rel_mse(qt: QTensor, dequantized: torch.Tensor) -> float | None:
    """``mean(step^2) / 12 / mean(W_q^2)``: rounding error of a uniform grid with the stored scale as its step."""
    scale = qt.params.get("scale")
    if scale is None or not qt.scheme.is_integer:
        return None
    g = qt.grouping
    # (rows, n_groups) -> one step per weight (rows, cols); a ragged last group is cut to the columns it has
    per_value = scale.float().reshape(g.rows, -1).repeat_interleave(g.group_size, dim=1)[:, : g.cols]
    energy = float((dequantized.double() ** 2).mean())
    return float((per_value.double() ** 2).mean() / 12.0 / energy) if energy > 0 else None


def layer_rows(model: nn.Module, config: dict[str, Any], float_model: nn.Module | None) -> list[dict[str, Any]]:
    """One dict per packed module of ``model`` (in model order): what quanta.json says plus the weight error.

    Raises:
        QuantaError: the float model's weight of a packed module is missing or has another shape.
    """
    modules = dict(config.get("modules") or {})
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantModule):
            continue
        entry = modules.get(name, {})
        ref_parts, got_parts, estimates, float_bytes = [], [], [], 0
        for weight_name, qt in module.qweights.items():
            dequantized = qt.dequantize().float()
            float_bytes += qt.numel * torch.empty((), dtype=qt.dtype).element_size()
            reference = _float_weight(float_model, module, name, weight_name, qt)
            if reference is not None:
                ref_parts.append(reference.reshape(-1))
                got_parts.append(dequantized.reshape(-1))
            estimates.append(_estimated_rel_mse(qt, dequantized))
        rel_mse: float | None = None
        source = None
        if ref_parts:
            ref, got = torch.cat(ref_parts).double(), torch.cat(got_parts).double()
            signal = float((ref**2).sum())
            rel_mse = float(((ref - got) ** 2).sum()) / signal if signal > 0 else None
            source = "float model"
        elif estimates and all(e is not None for e in estimates):
            rel_mse = float(sum(e for e in estimates if e is not None) / len(estimates))
            source = "estimate (step^2/12)"
        float_type = type(module).float_type.__name__
        numel = sum(qt.numel for qt in module.qweights.values())
        rows.append(
            {
                "name": name,
                "class": type(module).__name__,
                "float_class": float_type,
                "scheme": entry.get("scheme", str(module.qweight_named(next(iter(module.qweights))).scheme)),
                "weights": {k: str(qt.scheme) for k, qt in module.qweights.items()},
                "activation": None if module.act_scheme is None else str(module.act_scheme),
                "dynamic": bool(module.act_dynamic),
                "method": method_for(config.get("recipe"), name, float_type),
                "kernel": getattr(module, "kernel", "reference"),
                "nbytes": sum(qt.nbytes for qt in module.qweights.values()),
                "float_nbytes": float_bytes,
                "numel": numel,
                "bits_per_weight": 8.0 * sum(qt.nbytes for qt in module.qweights.values()) / numel,
                "weight_rel_mse": rel_mse,
                "weight_sqnr_db": None
                if rel_mse is None
                else (math.inf if rel_mse == 0 else -10 * math.log10(rel_mse)),
                "error_source": source,
            }
        )
    return rows


def histogram(model: nn.Module, float_model: nn.Module | None, name: str) -> dict[str, Any]:
    """Histogram of layer ``name``'s float weights (its dequantized ones without a float model) and the grid.

    The grid drawn is the representable values of the group whose grid spans the widest range (per-channel and
    per-group schemes have one grid per group; that one covers the histogram), or ``None`` when the format has
    too many codes to list.
    """
    module = model.get_submodule(name)
    if not isinstance(module, QuantModule):
        raise QuantaError(f"{name!r} is not a packed module; histograms are drawn for packed layers.")
    weight_name = next(iter(module.qweights))
    qt = module.qweights[weight_name]
    reference = _float_weight(float_model, module, name, weight_name, qt)
    values = (reference if reference is not None else qt.dequantize().float()).reshape(-1).double()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values.numpy(), bins=HISTOGRAM_BINS, range=(lo, hi))
    levels: list[float] | None = None
    group: list[int] | None = None
    try:
        grid = qt.scheme.fmt.levels(qt.params, qt.scheme).float()  # (rows, n_groups, 2**bits)
        spread = grid.amax(-1) - grid.amin(-1)
        flat = int(spread.reshape(-1).argmax())
        row, col = divmod(flat, spread.shape[1])
        levels = sorted({float(v) for v in grid[row, col]})
        group = [row, col]
    except (QuantaError, RuntimeError, ValueError):
        levels = None
    return {
        "layer": name,
        "weight": weight_name,
        "scheme": str(qt.scheme),
        "source": "float model" if reference is not None else "dequantized",
        "bin_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "levels": levels,
        "levels_group": group,
    }
