"""GGUF export of Llama-family language models, for llama.cpp: ``quanta.export(model, "gguf", "model.gguf")``.

Each weight goes out as the ggml type that holds it best (:mod:`quanta.export.gguf_codec`):

* a quanta QTensor whose scheme maps onto Q8_0, Q4_0, Q4_1 or Q4_K is transcoded losslessly: its codes and
  scales are carried over, and ggml's dequantization gives exactly ``QTensor.dequantize()``;
* any other QTensor is requantized from its dequantized values, with a warning naming it, to ``qtype`` (by
  default Q8_0 for schemes of more than 4 bits, else Q4_K, or Q4_1 where rows are not a multiple of 256);
* float weights are written as F16 (``float_type="f32"`` for F32), or quantized to ``qtype`` when one is given;
  norms (1-D) are always F32, as llama.cpp wants.

A row whose length the ggml block does not divide (32, or 256 for Q4_K; stories260K's 172) cannot be quantized
in GGUF: that tensor falls back to F16 (F32 when its dequantized values are not exact in fp16), and the result's
``in_float`` and ``notes`` say so. Query and key rows are permuted from transformers' rotate-half layout to the
interleaved one llama.cpp's rope expects (rows only, so codes move with their scales). The architecture metadata
comes from the HF config, the tokenizer (``tokenizer.ggml.*``) from the model's sentencepiece ``tokenizer.model``
(or the ``tokenizer.json`` derived from it, :mod:`quanta.export.gguf_vocab`).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quanta._version import __version__
from quanta.errors import QuantaError, UnsupportedError
from quanta.export import ExportResult, register_exporter
from quanta.export.ggml_blocks import BLOCKS
from quanta.export.gguf_codec import encode, lossless_type, requantize, to_qtensor
from quanta.export.gguf_vocab import add_bos_eos, read_vocab
from quanta.io import atomic_path
from quanta.nn.base import QuantModule
from quanta.tensor import QTensor

__all__ = ["export_gguf", "gguf_tensors", "rename"]

FLOAT_TYPES = ("f16", "f32")
_NAMES = [  # transformers Llama name <-> GGUF name ("{}" is the block index)
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight"),
    ("model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight"),
    ("model.layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.weight"),
    ("model.layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.weight"),
    ("model.layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.weight"),
    ("model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight"),
    ("model.layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_gate.weight"),
    ("model.layers.{}.mlp.up_proj.weight", "blk.{}.ffn_up.weight"),
    ("model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight"),
]
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K": 15}


def rename(name: str, to_gguf: bool = True) -> str | None:
    """The GGUF name of transformers tensor ``name`` (or the reverse), ``None`` when it has none."""
    for hf, gg in _NAMES:
        source, target = (hf, gg) if to_gguf else (gg, hf)
        match = re.fullmatch(re.escape(source).replace(r"\{\}", r"(\d+)"), name)
        if match:
            return target.format(*match.groups())
    return None


def _gguf_name(name: str) -> str:
    found = rename(name)
    if found is None:
        raise UnsupportedError(
            f"the GGUF exporter does not know where tensor {name!r} goes; it writes Llama-family models "
            "(LlamaForCausalLM without biases: embeddings, q/k/v/o and gate/up/down projections, RMS norms)."
        )
    return found


def _weights(model: nn.Module) -> dict[str, QTensor | torch.Tensor]:
    """Every weight of ``model`` by its transformers name: QTensors for packed ones, float tensors otherwise."""
    found: dict[str, QTensor | torch.Tensor] = {}
    packed: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            if module.input_smoothing is not None:
                raise UnsupportedError(
                    f"{name} has run-time input smoothing (the smoothinput method), which GGUF has no place for; "
                    "quantize without it for a GGUF export."
                )
            for wname, qt in module.qweights.items():
                if qt.codes.data_ptr() not in packed:  # tied weights share one QTensor: written once
                    packed[qt.codes.data_ptr()] = name
                    found[f"{name}.{wname}"] = qt
    for name, param in model.named_parameters():  # tied float parameters are listed once
        found[name] = param.detach()
    return found


def _rope_permutation(rows: int, heads: int) -> torch.Tensor:
    """Row order taking transformers' rotate-half q/k layout to llama.cpp's interleaved pairs (per head)."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, 2, half).transpose(1, 2).reshape(-1)


def _fallback(values: torch.Tensor, float_type: str) -> tuple[np.ndarray, str]:
    """F16 when every value is exact in fp16 (or F16 was asked for), else F32."""
    f16 = values.to(torch.float16)
    if float_type == "f16" and bool(torch.isfinite(f16).all()):
        return f16.numpy(), "F16"
    if bool((f16.float() == values.float()).all()):
        return f16.numpy(), "F16"
    return values.float().numpy(), "F32"


def _default_qtype(qt: QTensor) -> str:
    if qt.scheme.bits > 4:
        return "Q8_0"
    return "Q4_K" if qt.shape[-1] % 256 == 0 else "Q4_1"


def gguf_tensors(
    model: nn.Module, qtype: str | None = None, float_type: str = "f16"
) -> tuple[list[tuple[str, np.ndarray, str]], dict[str, str], dict[str, str], list[str]]:
    """Every tensor of ``model`` as GGUF data: ``[(gguf name, array, ggml type)]``, plus what was done.

    Returns:
        ``(tensors, written, fallbacks, requantized)``: tensors in file order; GGUF name -> how it was written
        (``"int8:g32:sf16 -> Q8_0 lossless, max |err| 0"``), for each tensor quantized in quanta or in the file;
        GGUF name -> why it fell back to float; the tensors requantized.
    """
    config: Any = getattr(model, "config", None)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tensors: list[tuple[str, np.ndarray, str]] = []
    written: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    requantized: list[str] = []
    for hf_name, value in _weights(model).items():
        name = _gguf_name(hf_name)
        qt = value if isinstance(value, QTensor) else None
        reference = value.dequantize().float() if isinstance(value, QTensor) else value.float()
        how = str(qt.scheme) if qt is not None else "float"
        if reference.dim() == 1:
            data, kind = reference.numpy(), "F32"
        else:
            found = lossless_type(qt)[0] if qt is not None else None
            target = found or qtype or (_default_qtype(qt) if qt is not None else None)
            cols = reference.shape[1]
            if target is None:
                data, kind = _fallback(reference, float_type)
            elif cols % BLOCKS[target].values:
                data, kind = _fallback(reference, float_type if qt is None else "exact")
                fallbacks[name] = (
                    f"rows of {cols} values are not a multiple of {target}'s block {BLOCKS[target].values}"
                )
            else:
                source = qt if found is not None else requantize(reference, target)
                if qt is not None and found is None:
                    requantized.append(f"{name} ({qt.scheme} -> {target})")
                assert source is not None
                data, kind = encode(source, target), target
        decoded = _decode(data, kind, reference.shape)
        error = float((decoded - reference).abs().max()) if reference.numel() else 0.0
        exact = "lossless" if error == 0 else "requantized" if qt is not None and kind in BLOCKS else "rounded"
        if qt is not None or kind in BLOCKS:  # quantized in quanta or in the file; plain float tensors are not listed
            written[name] = f"{how} -> {kind} {exact}, max |err| {error:.3g}"
        if name.startswith("blk.") and (name.endswith("attn_q.weight") or name.endswith("attn_k.weight")):
            perm = _rope_permutation(data.shape[0], heads if name.endswith("attn_q.weight") else kv_heads)
            data = data[perm.numpy()]
        tensors.append((name, np.ascontiguousarray(data), kind))
    return tensors, written, fallbacks, requantized


def _decode(data: np.ndarray, kind: str, shape: torch.Size) -> torch.Tensor:
    if kind in BLOCKS:
        return to_qtensor(kind, data, shape[0], shape[1]).dequantize()
    return torch.from_numpy(data.astype(np.float32)).reshape(shape)


def _check_llama(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        kind = getattr(config, "model_type", None) or type(model).__name__
        raise UnsupportedError(f"GGUF export supports Llama-family models (model_type 'llama'), not {kind!r}.")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedError(f"GGUF export supports the default rope only, not rope_type {rope['rope_type']!r}.")
    return config


@register_exporter("gguf", "GGUF for llama.cpp (Llama family): Q8_0 / Q4_0 / Q4_1 / Q4_K, lossless where schemes map")
def export_gguf(model: nn.Module, path: Path, example_inputs: Any = None, **options: Any) -> ExportResult:
    """Write a Llama-family model (float or quantized by quanta) to a GGUF file llama.cpp can run.

    Args:
        model: a transformers ``LlamaForCausalLM``, float or quantized (``quanta.load`` of a saved LM).
        path: the ``.gguf`` file, written atomically.
        example_inputs: unused (GGUF is not traced).
        **options: ``qtype`` (``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q4_K``: the type float weights are quantized to
            and non-mapping schemes are requantized to), ``float_type`` (``f16`` or ``f32``) and ``tokenizer``
            (folder with ``tokenizer.model``; default: the folder the model was loaded from).

    Returns:
        The :class:`~quanta.export.ExportResult`; ``quantized`` says how each tensor was written.

    Raises:
        UnsupportedError: not a Llama model, an unknown option, ``qtype`` or ``float_type``.
        QuantaError: no ``tokenizer.model`` to take the vocabulary from.
    """
    import gguf

    unknown = set(options) - {"qtype", "float_type", "tokenizer", "allow_float"}  # float fallback is by design
    if unknown:
        raise UnsupportedError(f"unknown GGUF option(s) {sorted(unknown)}; use qtype, float_type or tokenizer.")
    qtype = options.get("qtype")
    qtype = None if qtype is None else str(qtype).upper()
    float_type = str(options.get("float_type", "f16")).lower()
    if qtype is not None and qtype not in BLOCKS:
        raise UnsupportedError(f"GGUF qtype {qtype!r} is not supported; quanta writes {', '.join(BLOCKS)}.")
    if float_type not in FLOAT_TYPES:
        raise UnsupportedError(f"GGUF float_type {float_type!r} is not supported; use f16 or f32.")
    config = _check_llama(model)
    source = options.get("tokenizer") or getattr(model, "quanta_hf_source", None)
    if source is None:
        raise QuantaError("GGUF export needs the tokenizer: pass tokenizer=<folder with tokenizer.model or .json>.")
    vocab = read_vocab(Path(str(source)))
    tensors, written, fallbacks, requantized = gguf_tensors(model, qtype, float_type)
    if requantized:
        warnings.warn(
            f"GGUF has no lossless form for {len(requantized)} tensor(s), requantized from their dequantized "
            f"weights: {', '.join(requantized)}. Schemes that transcode losslessly: int8:g32:sf16 (Q8_0), "
            "int4:g32:sf16 (Q4_0), int4:g32:fmin:sf16 (Q4_1), q4_k:g256:sf16 (Q4_K).",
            stacklevel=3,  # the caller of quanta.export
        )
    kinds = Counter(kind for _, data, kind in tensors if data.ndim == 2)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = dict(getattr(config, "rope_parameters", None) or {})
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(str(getattr(config, "_name_or_path", "") or "quanta export"))
        writer.add_string("general.quantized_by", f"quanta {__version__}")
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(_FILE_TYPES[kinds.most_common(1)[0][0]] if kinds else 0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
        for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
            if isinstance(getattr(config, key, None), int):
                setter(getattr(config, key))
        if 2 in vocab.types:
            writer.add_unk_token_id(vocab.types.index(2))
        add_bos, add_eos = add_bos_eos(Path(str(source)))
        writer.add_add_bos_token(add_bos)
        writer.add_add_eos_token(add_eos)
        for name, data, kind in tensors:
            raw = getattr(gguf.GGMLQuantizationType, kind) if kind in BLOCKS else None
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    notes = [f"{name}: {why}; written as float" for name, why in fallbacks.items()]
    notes += [f"requantized (no lossless GGUF form): {r}" for r in requantized]
    return ExportResult(path, "gguf", path.stat().st_size, written, fallbacks, tuple(notes))
