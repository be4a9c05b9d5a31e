"""An energy estimate per inference from operation counts by precision and memory traffic (Horowitz, ISSCC 2014).

One forward pass with forward hooks counts the multiply-accumulates (MACs) of every Linear and convolution (float
or packed) from its input and output shapes: a convolution's output element needs ``(C_in / groups) * prod(kernel)``
MACs, a linear layer's ``in_features``. Each layer's MACs are costed at the precision they run at:

- float activations (weight-only quantization included: the weight is dequantized and the MAC runs in float):
  ``fp32`` or ``fp16`` by the input dtype;
- quantized activations: an integer MAC as wide as the wider of the weight and activation codes, classed ``int8``
  (5..8 bits), ``int4`` (2..4 bits, "int4 and lower") or ``binary`` (both 1 bit: XNOR + popcount).

Memory traffic: each layer's weights (packed codes + scales, bias) are read once per inference from DRAM; its
input and output activations go through on-chip SRAM, at the bits they are stored in. Attention score products,
recurrent layers and element-wise ops are not counted (they are listed in ``uncounted``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.nn.base import QuantModule

__all__ = ["ENERGY_PJ", "ENERGY_SOURCE", "EnergyEstimate", "LayerEnergy", "estimate_energy", "mac_energy_pj"]

ENERGY_SOURCE = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', IEEE ISSCC 2014, pp. 10-14 (45 nm, 0.9 V)"
)
# Energy per operation in picojoules, as published (Horowitz 2014, figure 1.1.9).
ENERGY_PJ: dict[str, float] = {
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "int32_add": 0.1,
    "int32_mult": 3.1,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_8kb_read_64bit": 10.0,
    "dram_read_64bit": 1300.0,  # the paper gives 1.3-2.6 nJ: the low end, so memory is not overstated
}
# Below 8 bits the paper has no figures. Assumption: a multiplier's energy grows with the square of its width (an
# array multiplier has bits^2 partial-product cells) and an adder's linearly; Horowitz's own numbers follow this
# (int32/int8 multiply 3.1/0.2 = 15.5 ~ 4^2, add 0.1/0.03 = 3.3 ~ 4). A b-bit integer MAC is then
# 0.2 (b/8)^2 pJ for the multiply plus a 32-bit accumulate (0.1 pJ), as int8 kernels accumulate in int32. A binary
# MAC (XNOR-popcount, Rastegari et al., XNOR-Net, ECCV 2016) is a 1-bit multiply (an XNOR, 0.2/64 pJ) plus one
# bit of the popcount adder tree (the 8-bit add scaled to 1 bit, 0.03/8 pJ).
SCALING_ASSUMPTION = (
    "below 8 bits: multiply energy ~ bits^2, add energy ~ bits (scaled from the int8 figures); integer MACs "
    "accumulate in int32; binary MAC = 1-bit XNOR + 1 bit of popcount"
)
PRECISIONS = ("fp32", "fp16", "int8", "int4", "binary")


def mac_energy_pj(weight_bits: int | None, act_bits: int | None, float_bits: int = 32) -> tuple[str, float]:
    """The precision class and energy (pJ) of one multiply-accumulate.

    Args:
        weight_bits: bits of the weight codes (``None``: a float weight).
        act_bits: bits of the activation codes (``None``: float activations, so the MAC runs in float).
        float_bits: width of the float MAC when one is used (32, or 16 for fp16/bf16 inputs).

    Returns:
        ``(precision, pJ)`` with precision one of ``fp32``, ``fp16``, ``int8``, ``int4``, ``binary``.

    Example:
        >>> [(p, round(pj, 4)) for p, pj in (mac_energy_pj(None, None), mac_energy_pj(8, 8), mac_energy_pj(1, 1))]
        [('fp32', 4.6), ('int8', 0.3), ('binary', 0.0069)]
    """
    if weight_bits is None or act_bits is None:
        if float_bits <= 16:
            return "fp16", ENERGY_PJ["fp16_mult"] + ENERGY_PJ["fp16_add"]
        return "fp32", ENERGY_PJ["fp32_mult"] + ENERGY_PJ["fp32_add"]
    bits = max(weight_bits, act_bits)
    if bits == 1:
        return "binary", ENERGY_PJ["int8_mult"] / 64 + ENERGY_PJ["int8_add"] / 8
    precision = "int4" if bits <= 4 else "int8" if bits <= 8 else f"int{bits}"
    return precision, ENERGY_PJ["int8_mult"] * (bits / 8) ** 2 + ENERGY_PJ["int32_add"]


@dataclass(frozen=True)
class LayerEnergy:
    """One layer's MACs per inference, their precision and the energy of compute and memory traffic (pJ)."""

    name: str
    kind: str
    macs: int
    precision: str
    weight_bits: int | None
    act_bits: int | None
    weight_bytes: int
    act_bytes: int
    compute_pj: float
    weight_memory_pj: float
    act_memory_pj: float


@dataclass(frozen=True)
class EnergyEstimate:
    """The energy of one inference: per layer, MACs by precision, and totals in picojoules."""

    layers: list[LayerEnergy]
    macs_by_precision: dict[str, int]
    compute_pj: float
    weight_memory_pj: float
    act_memory_pj: float
    uncounted: list[str]

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.weight_memory_pj + self.act_memory_pj

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the layers as dicts, plus ``total_pj``)."""
        return {**asdict(self), "total_pj": self.total_pj}


def _is_counted(module: nn.Module) -> bool:
    base = type(module).float_type if isinstance(module, QuantModule) else type(module)
    return issubclass(base, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or base.__name__ == "Conv1D"


def _weight_bytes(module: nn.Module, as_float: bool) -> tuple[int, int | None, torch.Size]:
    """(bytes read, weight code bits or None for float, weight shape) of a counted layer."""
    bias = getattr(module, "bias", None)
    nbytes = 0 if not isinstance(bias, torch.Tensor) else bias.numel() * bias.element_size()
    if isinstance(module, QuantModule):
        qt = module.qweight
        if as_float:
            return nbytes + qt.numel * 4, None, qt.shape
        return nbytes + qt.nbytes, qt.scheme.bits, qt.shape
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise QuantaError(f"{type(module).__name__} has no weight tensor; its MACs cannot be counted.")
    return nbytes + weight.numel() * (4 if as_float else weight.element_size()), None, weight.shape


def _layer(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, as_float: bool) -> LayerEnergy:
    weight_bytes, weight_bits, shape = _weight_bytes(module, as_float)
    conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or (
        isinstance(module, QuantModule) and issubclass(type(module).float_type, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    )
    # conv weight (C_out, C_in / groups, *kernel): each output element sums C_in / groups * prod(kernel) products
    per_output = shape.numel() // shape[0] if conv else x.shape[-1]
    macs = y.numel() * per_output // n
    act_scheme = None if as_float or not isinstance(module, QuantModule) else module.act_scheme
    act_bits = None if act_scheme is None else act_scheme.bits
    float_bits = 32 if as_float or not x.is_floating_point() else 8 * x.element_size()
    precision, mac_pj = mac_energy_pj(weight_bits, act_bits, float_bits)
    # a quantized input is stored as codes (int8 tensors between int8 convs, or fake-quantized values)
    in_bits = act_bits if act_bits is not None else 32 if as_float else 8 * x.element_size()
    out_bits = 32 if as_float else 8 * y.element_size()
    act_bytes = (x.numel() * in_bits + y.numel() * out_bits) // (8 * n)
    return LayerEnergy(
        name=name,
        kind=type(module).__name__,
        macs=macs,
        precision=precision,
        weight_bits=weight_bits,
        act_bits=act_bits,
        weight_bytes=weight_bytes,
        act_bytes=act_bytes,
        compute_pj=macs * mac_pj,
        weight_memory_pj=weight_bytes / 8 * ENERGY_PJ["dram_read_64bit"],
        act_memory_pj=act_bytes / 8 * ENERGY_PJ["sram_8kb_read_64bit"],
    )


def estimate_energy(
    model: nn.Module, example: Any, *, as_float: bool = False, run: Callable[[nn.Module, Any], Any] | None = None
) -> EnergyEstimate:
    """Estimate the energy of one inference of ``model`` (per sample of the batch ``example``).

    Args:
        model: a float or quantized model.
        example: one input batch (a tensor, or what ``run`` passes on); counts are divided by its first dimension.
        as_float: cost every counted layer as fp32 with 4-byte weights (the float model's figures, from a
            quantized model with the same shapes).
        run: how to call the model (default ``model(example)``).

    Returns:
        An :class:`EnergyEstimate`; the per-operation energies and their source are :data:`ENERGY_PJ` and
        :data:`ENERGY_SOURCE`.

    Raises:
        QuantaError: the model has no Linear or convolution layer to count.

    Example:
        >>> est = estimate_energy(torch.nn.Linear(16, 4), torch.randn(2, 16))
        >>> est.macs_by_precision["fp32"], est.layers[0].weight_bytes
        (64, 272)
    """
    x0 = example[0] if isinstance(example, (tuple, list)) else example
    n = int(x0.shape[0]) if isinstance(x0, torch.Tensor) and x0.dim() > 1 else 1
    layers: list[LayerEnergy] = []
    counted = {name: m for name, m in model.named_modules() if _is_counted(m)}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                layers.append(_layer(name, module, args[0], output, n, as_float))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in counted.items()]
    try:
        with torch.no_grad():
            (run or (lambda m, e: m(e)))(model, example)
    finally:
        for handle in handles:
            handle.remove()
    if not layers:
        raise QuantaError(f"{type(model).__name__} ran no Linear or convolution layer; there are no MACs to count.")
    macs = dict.fromkeys(PRECISIONS, 0)
    for layer in layers:
        macs[layer.precision] = macs.get(layer.precision, 0) + layer.macs
    leaves = [name for name, m in model.named_modules() if name and not list(m.children()) and name not in counted]
    uncounted = [n for n in leaves if any(p.numel() for p in model.get_submodule(n).parameters(recurse=False))]
    return EnergyEstimate(
        layers=layers,
        macs_by_precision=macs,
        compute_pj=sum(layer.compute_pj for layer in layers),
        weight_memory_pj=sum(layer.weight_memory_pj for layer in layers),
        act_memory_pj=sum(layer.act_memory_pj for layer in layers),
        uncounted=uncounted,
    )
