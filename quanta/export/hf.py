"""Hugging Face export: ``quanta.export(model, "hf", out_dir)`` writes a directory transformers reloads.

Packed ``QuantLinear`` weights of integer schemes (``int1..int8`` / ``uint1..uint8``, ``sym`` or ``asym``; per
tensor, per channel or per group) are written in the compressed-tensors ``pack-quantized`` layout, so
``AutoModelForCausalLM.from_pretrained(out)`` (with the ``compressed-tensors`` package installed) loads them and
vLLM-style runtimes can read them. quanta's codes and scales are carried over unchanged:

* codes: compressed-tensors stores signed codes (``uint`` codes are shifted by ``2**(bits-1)``, as are their zero
  points), so ``(q - z) * s`` is the same number in both;
* scales are written as fp32 (fp16 and bf16 scales upcast exactly): compressed-tensors dequantizes in the
  scale's dtype, so ``(q - z) * s`` is computed as quanta computes it and equals ``QTensor.dequantize()`` bit
  for bit (fp16 scales would make it round the products to fp16);
* a per-tensor scale is written per channel and a ragged last group (quanta allows ``cols % g != 0``,
  compressed-tensors does not) as groups of ``gcd(g, cols)`` with repeated scales: the same values, more scales.

``config.json`` gets the ``quantization_config`` (``quant_method: compressed-tensors``, one config group per
distinct weight scheme, targets by module name, float ``Linear`` modules in ``ignore``) and a ``quanta`` entry
with each module's quanta scheme, so :func:`quanta.export.hf_model.load_hf_quantized` restores the scheme
exactly. Other schemes (nf4, fp8, codebooks, ``fmin``, activation quantization, quantized embeddings) raise
:class:`~quanta.errors.UnsupportedError` listing what the layout holds; ``allow_float=True`` writes those
modules as dequantized float weights instead. The directory is written atomically (a staging directory renamed
into place).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError, UnsupportedError
from quanta.export import ExportResult, register_exporter
from quanta.export.hf_layouts import pack_dense
from quanta.io import atomic_dir, save_tensors
from quanta.lm.hf import HF_CONFIG_FILE, is_hf_model, write_hf_files
from quanta.nn.base import QuantModule
from quanta.nn.linear import QuantLinear
from quanta.tensor import QTensor

__all__ = ["SUPPORTED", "ct_tensors", "export_hf"]

SUPPORTED = (
    "weight-only QuantLinear with int1..int8 / uint1..uint8 codes, sym or asym, per tensor, channel or group "
    "(e.g. int8:ch, int4:g32:asym:sf16, uint4:g128)"
)
WEIGHTS_FILE = "model.safetensors"
QUANTA_KEY = "quanta"  # config.json entry: module -> quanta scheme, for an exact re-import
HF_EXPORT_VERSION = 1


def unsupported_reason(qt: QTensor) -> str | None:
    """Why ``qt`` has no place in the pack-quantized layout, or ``None`` when it fits."""
    s = qt.scheme
    if not s.is_integer or s.bits > 8:
        return f"{s.format} codes (the layout holds 1..8-bit integers)"
    if s.mode == "fmin":
        return "a float minimum offset (fmin); the layout has integer zero points"
    if len(qt.shape) != 2 or qt.axis not in (None, 1, -1):
        return f"a {len(qt.shape)}-D weight reduced along axis {qt.axis}; the layout holds Linear (out, in) weights"
    return None


def _written_group(qt: QTensor) -> int | None:
    """Group size the layout needs for ``qt`` (``None``: per channel): ``gcd(g, cols)`` covers a ragged tail."""
    cols = int(qt.shape[1])
    g = int(qt.scheme.group_size or cols) if qt.scheme.granularity == "group" else cols
    return None if g >= cols else math.gcd(g, cols)


def _common_group_size(qts: dict[str, QTensor]) -> int | None:
    """One group size for all the weights of an asymmetric model, when they differ only in their groups.

    transformers reads asymmetric files on its ``dequantize`` path, which applies one config group's scheme to
    every dense layer; so a model whose layers need per-channel (64 columns), g32 and g4 (a ragged 172-column
    layer) is written with g4 throughout: smaller groups with repeated scales and zero points hold the same
    values. ``None`` when no single group is needed or none fits (different bits or symmetry).
    """
    kinds = {(qt.scheme.bits, qt.scheme.mode) for qt in qts.values()}
    sizes = {_written_group(qt) or int(qt.shape[1]) for qt in qts.values()}
    if len(kinds) != 1 or next(iter(kinds))[1] != "asym" or len(sizes) < 2:
        return None
    return math.gcd(*sizes)


def ct_tensors(qt: QTensor, group_size: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A QTensor as compressed-tensors ``pack-quantized`` tensors, plus the config group's ``weights`` args.

    Args:
        qt: a QTensor of an integer sym/asym scheme of at most 8 bits, Linear layout ``(out, in)``.
        group_size: write groups of this size (a divisor of the scheme's group and of the columns), repeating
            each scale; default: the scheme's own groups (``gcd(g, cols)`` when the last group is ragged).

    Returns:
        ``({"weight_packed", "weight_scale", ["weight_zero_point"], "weight_shape"}, args)``: tensors named as
        compressed-tensors names them (without the module prefix) and the ``QuantizationArgs`` dict.

    Raises:
        UnsupportedError: the scheme is not an integer sym/asym scheme of at most 8 bits (see :data:`SUPPORTED`).
    """
    reason = unsupported_reason(qt)
    if reason is not None:
        raise UnsupportedError(
            f"the hf (compressed-tensors) export cannot hold {qt.scheme}: {reason}. It writes {SUPPORTED}."
        )
    s, bits = qt.scheme, qt.scheme.bits
    rows, cols = int(qt.shape[0]), int(qt.shape[1])
    shift = 0 if s.fmt.signed_codes else 1 << (bits - 1)  # compressed-tensors codes are signed: q - 2**(b-1)
    codes = qt.unpacked_codes().reshape(rows, cols).to(torch.int64) - shift  # (out, in), signed
    scale = qt.params["scale"].reshape(rows, -1)
    zero = qt.params["zero"].reshape(rows, -1).to(torch.int64) - shift if s.mode == "asym" else None
    if s.granularity == "tensor":  # one scale for all: written once per row (channel strategy)
        scale, zero = scale.expand(rows, 1), None if zero is None else zero.expand(rows, 1)
    args: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": s.mode == "sym", "dynamic": False}
    size = _written_group(qt) if group_size is None else group_size
    if size is not None:
        g = int(s.group_size or cols)
        index = torch.arange(cols // size) * size // g  # quanta group of each written group
        scale, zero = scale[:, index], None if zero is None else zero[:, index]
        args.update(strategy="group", group_size=size)
    else:
        args.update(strategy="channel")
    half = 1 << (bits - 1)
    out = {
        "weight_packed": pack_dense(codes + half, bits),  # (out, ceil(in * bits / 32)) int32
        # (out, groups) fp32: compressed-tensors dequantizes in the scale's dtype, and fp16/bf16 scales upcast exactly
        "weight_scale": scale.to(torch.float32).contiguous(),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if zero is not None:
        out["weight_zero_point"] = pack_dense((zero + half).T.contiguous(), bits).T.contiguous()  # packed dim 0
    return out, args


def _group_name(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True)


def _float_tensors(model: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
    """Every float parameter and persistent buffer outside the packed modules (tied ones once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name in skip:
            continue
        for leaf, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None or leaf in getattr(module, "_non_persistent_buffers_set", set()):
                continue
            key = f"{name}.{leaf}" if name else leaf
            if tensor.data_ptr() in seen:  # tied (lm_head = embed_tokens): transformers ties it again
                continue
            seen.add(tensor.data_ptr())
            out[key] = tensor.detach().contiguous()
    return out


@register_exporter("hf", "Hugging Face directory: compressed-tensors pack-quantized weights + config.json")
def export_hf(
    model: nn.Module, path: Path, example_inputs: Any = None, *, allow_float: bool = False, tokenizer: Any = None
) -> ExportResult:
    """Write a transformers model quantized by quanta as a Hugging Face directory (see the module docstring).

    Args:
        model: a transformers model with packed quanta modules (``quanta.quantize`` / ``quanta.load``).
        path: the output directory; replaced atomically (staging directory, then rename).
        example_inputs: unused (nothing is traced).
        allow_float: write modules the layout cannot hold as dequantized float weights (listed in ``in_float``).
        tokenizer: a tokenizer to save with it (default: the files of the directory the model came from).

    Returns:
        An :class:`ExportResult` for the directory (``nbytes`` is the size of ``model.safetensors``).

    Raises:
        UnsupportedError: not a transformers model, or a module whose scheme the layout cannot hold (the message
            lists what it holds), unless ``allow_float``.
    """
    if not is_hf_model(model):
        raise UnsupportedError(f"the hf export writes transformers models, not {type(model).__name__}.")
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    quantized: dict[str, str] = {}
    in_float: dict[str, str] = {}
    schemes: dict[str, str] = {}
    chosen: dict[str, QTensor] = {}
    packed = {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}
    for name, module in packed.items():
        qt = module.qweights.get("weight")
        reason = "activation quantization (weight-only schemes only)" if module.act_scheme is not None else None
        smoothing = module.input_smoothing
        if reason is None and smoothing is not None:
            reason = "run-time input smoothing (smoothinput), which the layout has no place for"
        if not isinstance(module, QuantLinear):
            reason = f"{type(module).__name__} (the layout holds Linear weights only)"
        elif reason is None and qt is not None:
            reason = unsupported_reason(qt)
        if reason is not None or qt is None:
            what = f"{name} ({qt.scheme if qt is not None else type(module).__name__}): {reason}"
            if not allow_float:
                raise UnsupportedError(
                    f"the hf export cannot write {what}. It writes {SUPPORTED}; pass "
                    "allow_float=True (--allow-float) to write such modules as float weights."
                )
            weight = module.dequantized_weight(torch.float32)
            if smoothing is not None:  # the float layer's function: the smoothing folded back into the columns
                weight = weight * smoothing
            tensors[f"{name}.weight"] = weight.contiguous()
            in_float[name] = str(reason)
            quantized[name] = f"{qt.scheme if qt is not None else type(module).__name__} -> float weight (allow_float)"
            continue
        chosen[name] = qt
    group_size = _common_group_size(chosen)
    for name, qt in chosen.items():
        ct, args = ct_tensors(qt, group_size)
        tensors.update({f"{name}.{k}": v for k, v in ct.items()})
        groups.setdefault(_group_name(args), (args, []))[1].append(name)
        quantized[name] = f"{qt.scheme} -> pack-quantized int{args['num_bits']} {args['strategy']}" + (
            f" g{args['group_size']}" if args["strategy"] == "group" else ""
        )
        schemes[name] = str(qt.scheme)
    quantized_names = set(quantized) - set(in_float)
    floats = _float_tensors(model, quantized_names | set(in_float))
    for name in quantized_names | set(in_float):  # a packed module's bias stays float, under its usual name
        bias = getattr(packed[name], "bias", None)
        if bias is not None:
            floats[f"{name}.bias"] = bias.detach().contiguous()
    tensors.update(floats)
    float_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    hf_config = getattr(model, "config")  # noqa: B009  # a PretrainedConfig
    config = hf_config.to_dict()
    config.pop("quantization_config", None)
    if "lm_head" in packed and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False  # a packed head is no longer the (float) embedding
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {
                "targets": names,
                "weights": args,
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
            for i, (args, names) in enumerate(groups.values())
        },
        "ignore": sorted(set(float_linears) | set(in_float)),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }
    if any(not args["symmetric"] for args, _ in groups.values()):
        # transformers (5.x) with compressed-tensors (0.20) cannot load asymmetric pack-quantized weights on its
        # default path (it builds unpacked zero-point parameters; vllm-project/llm-compressor#1618); its
        # `dequantize` path unpacks them, so the file asks for that path.
        config["quantization_config"]["dequantize"] = True
    config[QUANTA_KEY] = {
        "format_version": HF_EXPORT_VERSION,
        "schemes": schemes,
        "recipe": getattr(model, "quanta_recipe", None),
    }
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise QuantaError(f"{target} is a file; the hf export writes a directory. Choose another -o.")
    with atomic_dir(target) as staging:
        write_hf_files(model, staging, tokenizer)  # tokenizer and generation files; config.json rewritten below
        save_tensors(staging / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        (staging / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    notes = [f"{len(groups)} compressed-tensors config group(s)", "load: AutoModelForCausalLM.from_pretrained(dir)"]
    return ExportResult(target, "hf", (target / WEIGHTS_FILE).stat().st_size, quantized, in_float, tuple(notes))
