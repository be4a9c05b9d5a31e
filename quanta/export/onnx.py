"""``quanta.export(model, "onnx", path, example_inputs)``: a QDQ ONNX graph that ONNX Runtime runs as quanta does.

How: every packed module is swapped, for the trace only, for an export twin that computes with its dequantized
float weight (Linear: ``x @ W^T + b`` as a ``MatMul``; Conv: the float convolution; Embedding: a gather) and marks
the weight, and a statically quantized input, with ``quanta::`` marker ops. torch's TorchScript exporter traces
the model (the torch.export-based exporter needs onnxscript, not installed here), the graph is converted to opset
21 (blocked DequantizeLinear, INT4 types), and :mod:`quanta.export._onnx_qdq` replaces each marker by
DequantizeLinear of quanta's own codes and scales, or by a QuantizeLinear/DequantizeLinear pair. The result passes
``onnx.checker`` (full check) before it is written, atomically. The model is given back as it was.

Schemes ONNX cannot hold (nf4, fp8, fp4, codebooks, fixed point, dynamic per-token inputs, ...) raise an
:class:`~quanta.errors.UnsupportedError` listing what the target supports; ``allow_float=True`` writes such weights
as dequantized float instead, with a warning.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError, UnsupportedError
from quanta.export import ExportResult, register_exporter
from quanta.io import atomic_path
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule
from quanta.nn.conv import QuantConv1d, QuantConv2d
from quanta.nn.embedding import QuantEmbedding
from quanta.nn.linear import QuantLinear
from quanta.primitives.affine import int_range

__all__ = ["MIN_OPSET", "export_onnx", "is_causal_lm"]

MIN_OPSET = 21  # blocked DequantizeLinear and the INT4/UINT4 types
_TRACE_OPSET = 20  # the newest opset torch's TorchScript exporter writes
_MAX_PROTO = 2**31 - 1  # protobuf's limit on one message
_MODULES = (QuantLinear, QuantConv1d, QuantConv2d, QuantEmbedding)


class _Weight(torch.autograd.Function):
    """Identity on a float weight in torch; the ``quanta::Weight`` marker in the traced graph."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, key: str) -> torch.Tensor:
        return w.clone()

    @staticmethod
    def symbolic(g: Any, w: Any, key: str) -> Any:
        out = g.op("quanta::Weight", w, key_s=key)
        out.setType(w.type())
        return out


class _Act(torch.autograd.Function):
    """Static fake quantization in torch; the ``quanta::Act`` marker in the traced graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, key: str, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)

    @staticmethod
    def symbolic(g: Any, x: Any, key: str, scale: float, zero: int, qmin: int, qmax: int) -> Any:
        out = g.op("quanta::Act", x, key_s=key)
        out.setType(x.type())
        return out


class _Twin(nn.Module):
    """What a packed module becomes for the trace: its float weight (marked unless it is written as float)."""

    def __init__(self, key: str, module: QuantModule, mark_weight: bool, weight: torch.Tensor) -> None:
        super().__init__()
        self.key, self.mark_weight = key, mark_weight
        self.weight = nn.Parameter(weight, requires_grad=False)
        bias = getattr(module, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        smoothing = module.input_smoothing  # smoothinput's per-feature factors: a Mul before the input QDQ
        self.smooth = None if smoothing is None else nn.Parameter(smoothing.detach().clone(), requires_grad=False)
        self.act: tuple[float, int, int, int] | None = None
        if module.act_scheme is not None:
            scheme = module.act_scheme
            qmin, qmax = int_range(scheme.bits, scheme.fmt.signed_codes, scheme.narrow)
            self.act = (float(module.act_scale), int(module.act_zero), qmin, qmax)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x * self.smooth
        return x if self.act is None else _Act.apply(x, self.key, *self.act)

    def _weight(self) -> torch.Tensor:
        return _Weight.apply(self.weight, self.key) if self.mark_weight else self.weight


class _LinearTwin(_Twin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self._input(x), self._weight())  # weight held (in, out): MatMul's B as ORT fuses it
        return y if self.bias is None else y + self.bias


class _ConvTwin(_Twin):
    def __init__(self, key: str, module: QuantModule, mark_weight: bool, weight: torch.Tensor) -> None:
        super().__init__(key, module, mark_weight, weight)
        assert isinstance(module, (QuantConv1d, QuantConv2d))
        self.conv_fn = module.conv_fn
        self.args = (module.stride, module.padding, module.dilation, module.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_fn(self._input(x), self._weight(), self.bias, *self.args)


class _EmbeddingTwin(_Twin):
    def __init__(self, key: str, module: QuantModule, mark_weight: bool, weight: torch.Tensor) -> None:
        super().__init__(key, module, mark_weight, weight)
        assert isinstance(module, QuantEmbedding)
        self.padding_idx = module.padding_idx
        self.act = None  # an embedding's input is ids; QuantEmbedding never quantizes them

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self._weight(), self.padding_idx)


class _LogitsOf(nn.Module):
    """A transformers causal LM as ``input_ids -> logits`` (no cache; an all-ones mask keeps the trace static)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers model. Read from ``sys.modules`` only: touching the lazy
    ``transformers.PreTrainedModel`` attribute imports all of transformers' modeling code (seconds)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def _twins(model: nn.Module, allow_float: bool) -> tuple[dict[str, _Twin], dict[str, str]]:
    """The export twin of every packed module, and the modules whose weights are written as float (with why)."""
    from quanta.export._onnx_qdq import SUPPORTED_ACTS, SUPPORTED_WEIGHTS, act_problem, weight_problem

    twins: dict[str, _Twin] = {}
    in_float: dict[str, str] = {}
    problems: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantModule):
            continue
        if not isinstance(module, _MODULES):
            problems.append(f"{name} ({type(module).__name__}): no ONNX export for this module type")
            continue
        act = act_problem(module.act_scheme, module.act_dynamic)
        if act is not None:
            problems.append(f"{name}: {act}")
            continue
        weight_why = weight_problem(module.weight_scheme, module.weight_axis)
        if weight_why is not None:
            if not allow_float:
                problems.append(f"{name}: {weight_why}")
                continue
            in_float[name] = weight_why
        weight = module.dequantized_weight(torch.float32)
        kind = {QuantLinear: _LinearTwin, QuantEmbedding: _EmbeddingTwin}.get(type(module), _ConvTwin)
        if kind is _LinearTwin:
            weight = weight.t()
        twins[name] = kind(name, module, weight_why is None, weight.contiguous())
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise UnsupportedError(
            f"cannot export to ONNX: {shown}. The ONNX target supports {SUPPORTED_WEIGHTS}; {SUPPORTED_ACTS}; "
            f"modules {', '.join(m.__name__ for m in _MODULES)}. Requantize with such a recipe (e.g. w8a8, "
            "w8a16, w4a16-g128), or pass allow_float=True (--allow-float) to write unsupported weights as float."
        )
    if in_float:
        warnings.warn(
            f"ONNX export: {len(in_float)} module(s) written with dequantized float weights: "
            f"{', '.join(list(in_float)[:6])} ({next(iter(in_float.values()))})",
            stacklevel=3,
        )
    return twins, in_float


def _trace(
    model: nn.Module,
    inputs: tuple[Any, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    hf: bool,
) -> Any:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is the legacy one on every call; that is known and chosen.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # it skips strided slices: harmless
        if hf:  # transformers' mask code branches on shapes the all-ones mask makes irrelevant
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                model,
                inputs,
                buffer,  # type: ignore[arg-type]  # a file object is accepted
                dynamo=False,
                opset_version=_TRACE_OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic,
                custom_opsets={"quanta": 1},
            )
    return onnx.load_from_string(buffer.getvalue())


@register_exporter("onnx", "ONNX QDQ graph (QuantizeLinear/DequantizeLinear, int4 blocks), runs in onnxruntime")
def export_onnx(
    model: nn.Module,
    path: Path,
    example_inputs: Any,
    *,
    opset: int = MIN_OPSET,
    allow_float: bool = False,
    dynamic_batch: bool = True,
) -> ExportResult:
    """Write ``model`` as an ONNX QDQ graph at ``path`` (see the module docstring); called by ``quanta.export``.

    Args:
        model: a quantized model, float32. A transformers causal LM is exported as ``input_ids -> logits``.
        path: the ``.onnx`` file to write (atomically).
        example_inputs: a tensor or a tuple of tensors to trace with (for an LM: ``input_ids``).
        opset: the ONNX opset, at least 21.
        allow_float: write weights whose scheme ONNX cannot hold as dequantized float (with a warning).
        dynamic_batch: leave dim 0 of every input (and dim 1 of an LM's ``input_ids``) free in the graph.

    Returns:
        An :class:`~quanta.export.ExportResult`.

    Raises:
        UnsupportedError: a module, weight or input scheme the target cannot hold; an opset below 21; a graph over
        2 GB. QuantaError: onnx is not installed, or no example inputs.
    """
    try:
        import onnx
        from onnx import version_converter
    except ImportError as exc:
        raise QuantaError(f"ONNX export needs onnx ({exc}); run: pip install 'quanta[export]'") from exc
    from quanta.export._onnx_qdq import ActQDQ, WeightQDQ, rewrite

    if opset < MIN_OPSET:
        raise UnsupportedError(f"opset {opset} is too old: QDQ int4 and blocked weights need opset {MIN_OPSET}+.")
    if example_inputs is None:
        raise QuantaError("ONNX export traces the model: pass example_inputs (a tensor or a tuple of tensors).")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    twins, in_float = _twins(model, allow_float)
    weights: dict[str, WeightQDQ] = {}
    acts: dict[str, ActQDQ] = {}
    for key, twin in twins.items():
        module = model.get_submodule(key)
        assert isinstance(module, QuantModule)
        if twin.mark_weight:
            weights[key] = WeightQDQ(module.qweight, isinstance(twin, _LinearTwin))
        if twin.act is not None and module.act_scheme is not None:
            acts[key] = ActQDQ(module.act_scheme, twin.act[0], twin.act[1])
    hf = is_causal_lm(model)
    names = ["input_ids"] if hf else [f"input_{i}" for i in range(len(inputs))]
    dynamic = {n: ({0: "batch", 1: "sequence"} if hf else {0: "batch"}) for n in names} if dynamic_batch else {}
    flow = int8_flow.is_enabled(model)
    originals = {name: model.get_submodule(name) for name in twins}
    try:
        int8_flow.enable(model, on=False)  # the twins never make int8 activations; keep the trace plain
        for name, twin in twins.items():
            model.set_submodule(name, twin)
        proto = _trace(_LogitsOf(model) if hf else model, inputs, names, ["logits" if hf else "output"], dynamic, hf)
    finally:
        for name, original in originals.items():
            model.set_submodule(name, original)
        if flow:
            int8_flow.enable(model)
    proto = version_converter.convert_version(proto, opset)
    described = rewrite(proto, weights, acts)
    if proto.ByteSize() > _MAX_PROTO:
        raise UnsupportedError(f"the ONNX graph is {proto.ByteSize():,} bytes; files over 2 GB are not supported yet.")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QuantaError(f"the exported graph fails onnx.checker ({exc}); please report this.") from exc
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    described.update({k: f"float ({why})" for k, why in in_float.items()})
    notes = (f"opset {opset}", "inputs: " + ", ".join(names))
    return ExportResult(path, "onnx", len(data), described, in_float, notes)
