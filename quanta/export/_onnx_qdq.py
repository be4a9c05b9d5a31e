"""The ONNX side of the ONNX exporter: which schemes a QDQ graph can hold, and the rewrite of the traced graph.

The traced graph carries two marker ops in the ``quanta`` domain, each naming its module in a ``key`` attribute:

* ``quanta::Weight(w_float)``: becomes ``DequantizeLinear(codes, scale[, zero_point])`` of integer initializers
  holding quanta's own codes and scales, so the weight ONNX Runtime computes with is exactly ``QTensor.dequantize()``.
  Per tensor: scalar scale; per channel: a 1-D scale with ``axis``; per group: opset 21's blocked form
  (``block_size``, scale ``(rows, n_groups)``; a ragged last group is a shorter last block).
* ``quanta::Act(x)``: becomes ``QuantizeLinear -> DequantizeLinear`` with the calibrated per-tensor scale and zero.

Codes go into the smallest ONNX integer type that holds them (INT4/UINT4 up to 4 bits, INT8/UINT8 up to 8, INT16/
UINT16 up to 16); codes narrower than their container (int3) are exact, only stored wider. Scales are written as
fp32: fp16/bf16 scales convert exactly. Linear weights are written transposed, ``(in, out)``, feeding ``MatMul``
directly, the pattern ONNX Runtime fuses into ``MatMulNBits`` for 4-bit blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from quanta.errors import CorruptDataError
from quanta.primitives.affine import int_range, symmetric_zero
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["ActQDQ", "WeightQDQ", "act_problem", "rewrite", "weight_problem"]

DOMAIN = "quanta"
SUPPORTED_WEIGHTS = "integer weights int1..int16 / uint1..uint16, sym or asym, per tensor, per channel or per group"
SUPPORTED_ACTS = "static per-tensor integer activations int4/uint4/int8/uint8/int16/uint16, full range"


def _container(bits: int, signed: bool) -> int:
    """The ONNX integer type holding ``bits``-wide codes."""
    width = 4 if bits <= 4 else 8 if bits <= 8 else 16
    return {
        (4, True): TensorProto.INT4,
        (4, False): TensorProto.UINT4,
        (8, True): TensorProto.INT8,
        (8, False): TensorProto.UINT8,
        (16, True): TensorProto.INT16,
        (16, False): TensorProto.UINT16,
    }[(width, signed)]


def weight_problem(scheme: QScheme, axis: int | None) -> str | None:
    """Why ``scheme`` cannot be a DequantizeLinear weight, or ``None`` when it can."""
    if not scheme.is_integer:
        return f"{scheme}: format {scheme.format} has no ONNX DequantizeLinear form"
    if scheme.mode == "fmin":
        return f"{scheme}: a float minimum offset (fmin) has no DequantizeLinear form; use sym or asym"
    if axis is not None:
        return f"{scheme}: weights quantized along axis {axis} (not the output-channel layout)"
    return None


def act_problem(scheme: QScheme | None, dynamic: bool) -> str | None:
    """Why an input quantized with ``scheme`` cannot be a QuantizeLinear/DequantizeLinear pair, or ``None``."""
    if scheme is None:
        return None
    if dynamic:
        return f"input {scheme} is quantized dynamically (per token); ONNX QuantizeLinear needs a fixed scale"
    if not scheme.is_integer:
        return f"input format {scheme.format} has no ONNX QuantizeLinear form"
    if scheme.bits not in (4, 8, 16) or scheme.narrow:
        return f"input {scheme}: QuantizeLinear saturates to a whole int4/int8/int16 range, not {scheme.bits} bits"
    return None


@dataclass(frozen=True)
class WeightQDQ:
    """One packed weight to write: its QTensor, and whether the graph wants it transposed (Linear: ``(in, out)``)."""

    qt: QTensor
    transposed: bool


@dataclass(frozen=True)
class ActQDQ:
    """One static input quantizer: scheme, scale and zero point."""

    scheme: QScheme
    scale: float
    zero: int


def _int_tensor(name: str, values: np.ndarray, bits: int, signed: bool) -> TensorProto:
    """An integer initializer; 4-bit values are packed two a byte, low nibble first (ONNX's INT4 layout)."""
    kind = _container(bits, signed)
    if kind in (TensorProto.INT4, TensorProto.UINT4):
        flat = (values.reshape(-1).astype(np.int64) & 0xF).astype(np.uint8)
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        packed = flat[0::2] | (flat[1::2] << 4)
        return helper.make_tensor(name, kind, list(values.shape), packed.tobytes(), raw=True)
    dtypes: dict[int, type[np.generic]] = {
        TensorProto.INT8: np.int8,
        TensorProto.UINT8: np.uint8,
        TensorProto.INT16: np.int16,
        TensorProto.UINT16: np.uint16,
    }
    dtype = dtypes[kind]
    return numpy_helper.from_array(values.astype(dtype), name)


def _weight_nodes(key: str, plan: WeightQDQ, out: str) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    """Initializers and nodes that compute weight ``key`` into ``out``, and a one-line description."""
    qt, scheme = plan.qt, plan.qt.scheme
    fmt, grouping = scheme.fmt, qt.grouping
    codes = qt.unpacked_codes().numpy()  # (rows, cols), columns along the reduction dim
    scale = qt.params["scale"].float().numpy()  # (rows, n_groups)
    signed = fmt.signed_codes
    if scheme.mode == "asym":
        zero: np.ndarray | None = qt.params["zero"].to(torch.int32).numpy()
    else:
        z0 = symmetric_zero(scheme.bits, signed)
        zero = None if z0 == 0 else np.full(scale.shape, z0, dtype=np.int32)
    shape = tuple(qt.shape)
    attrs: dict[str, int] = {}
    reshape = False
    if scheme.granularity == "tensor":
        q = codes.reshape(shape)
        scale, zero = scale.reshape(()), None if zero is None else zero.reshape(())
        how = "per tensor"
    elif grouping.n_groups == 1:  # per channel, or groups as wide as a row
        q = codes.reshape(shape)
        scale, zero = scale.reshape(-1), None if zero is None else zero.reshape(-1)
        attrs["axis"] = 0
        how = "per channel"
    else:  # blocked along the reduction dim of the (rows, cols) view
        q, reshape = codes, len(shape) != 2
        attrs["axis"], attrs["block_size"] = 1, grouping.group_size
        how = f"blocks of {grouping.group_size}"
    if plan.transposed:  # (out, in) -> (in, out); the scale's axis follows
        q = q.T
        if scale.ndim == 2:
            scale, zero = scale.T, None if zero is None else zero.T
        if "axis" in attrs:
            attrs["axis"] = 1 - attrs["axis"]
    names = [f"{key}.weight_quantized", f"{key}.weight_scale"]
    inits = [
        _int_tensor(names[0], q, scheme.bits, signed),
        numpy_helper.from_array(np.ascontiguousarray(scale), names[1]),
    ]
    if zero is not None:
        names.append(f"{key}.weight_zero_point")
        inits.append(_int_tensor(names[2], np.ascontiguousarray(zero), scheme.bits, signed))
    dq_out = f"{key}.weight_2d" if reshape else out
    nodes = [helper.make_node("DequantizeLinear", names, [dq_out], name=f"{key}.weight_dq", **attrs)]  # type: ignore[arg-type]
    if reshape:  # a grouped conv weight is blocked as (out, in * kh * kw), then given its shape back
        inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{key}.weight_shape"))
        nodes.append(helper.make_node("Reshape", [dq_out, f"{key}.weight_shape"], [out], name=f"{key}.weight_reshape"))
    container = TensorProto.DataType.Name(_container(scheme.bits, signed))
    return inits, nodes, f"{scheme} -> DequantizeLinear {container} {how}"


def _act_nodes(key: str, plan: ActQDQ, inp: str, out: str) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    qmin, qmax = int_range(plan.scheme.bits, plan.scheme.fmt.signed_codes, plan.scheme.narrow)
    if not qmin <= plan.zero <= qmax:
        raise CorruptDataError(f"{key}: input zero point {plan.zero} outside [{qmin}, {qmax}]")
    names = [f"{key}.input_scale", f"{key}.input_zero_point"]
    inits = [
        numpy_helper.from_array(np.array(plan.scale, dtype=np.float32), names[0]),
        _int_tensor(names[1], np.array(plan.zero), plan.scheme.bits, plan.scheme.fmt.signed_codes),
    ]
    codes = f"{key}.input_quantized"
    nodes = [
        helper.make_node("QuantizeLinear", [inp, *names], [codes], name=f"{key}.input_q"),
        helper.make_node("DequantizeLinear", [codes, *names], [out], name=f"{key}.input_dq"),
    ]
    return inits, nodes


def rewrite(model: onnx.ModelProto, weights: dict[str, WeightQDQ], acts: dict[str, ActQDQ]) -> dict[str, str]:
    """Replace every ``quanta::`` marker of ``model`` (in place) by its QDQ nodes; return key -> description."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    replaced_floats: set[str] = set()
    described: dict[str, str] = {}
    inputs: dict[str, str] = {}
    for node in graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        key = next(a.s.decode() for a in node.attribute if a.name == "key")
        if node.op_type == "Weight":
            inits, new, how = _weight_nodes(key, weights[key], node.output[0])
            replaced_floats.add(node.input[0])
            described[key] = how
        else:
            inits, new = _act_nodes(key, acts[key], node.input[0], node.output[0])
            inputs[key] = f"; input {acts[key].scheme} -> QuantizeLinear/DequantizeLinear"
        graph.initializer.extend(inits)
        nodes.extend(new)
    del graph.node[:]
    graph.node.extend(nodes)
    # The float weights the markers read are no longer used: drop them (their bytes are most of the file).
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name not in replaced_floats or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    opsets = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return {key: how + inputs.get(key, "") for key, how in described.items()}
