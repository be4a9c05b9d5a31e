"""A GGUF Llama file as a quanta model: ``load_gguf_llama(path)`` -> a transformers ``LlamaForCausalLM`` whose
quantized weights are packed quanta modules holding the file's codes (``QuantLinear`` / ``QuantEmbedding``).

The architecture comes from the ``llama.*`` metadata; query and key rows are put back from llama.cpp's
interleaved rope layout into transformers' rotate-half one (a row permutation, so codes stay with their
scales). The result can be evaluated (``quanta eval``-style perplexity, generation), saved with
``quanta.save`` or exported again; its weights dequantize exactly to what ggml dequantizes. The tokenizer is not
rebuilt from the file: use the model's original tokenizer.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from quanta.errors import UnsupportedError
from quanta.export.gguf import _rope_permutation, rename
from quanta.export.gguf_import import read_gguf
from quanta.nn.embedding import QuantEmbedding
from quanta.nn.linear import QuantLinear
from quanta.primitives.packing import pack
from quanta.tensor import QTensor

__all__ = ["load_gguf_llama", "permute_rows"]


def permute_rows(qt: QTensor, order: torch.Tensor) -> QTensor:
    """``qt`` with its rows (dim 0) taken in ``order``: codes and per-row parameters move together.

    Raises:
        UnsupportedError: a per-tensor scheme (its one row is the whole tensor) or a reduction axis other than
            the last.
    """
    if qt.scheme.granularity == "tensor" or len(qt.shape) != 2 or qt.axis not in (None, 1, -1):
        raise UnsupportedError(f"permute_rows needs a 2-D per-channel or per-group QTensor, not {qt.scheme}.")
    codes = qt.unpacked_codes()[order].reshape(-1)
    params = {k: v[order].contiguous() for k, v in qt.params.items()}
    packed = pack(codes, qt.scheme.bits, qt.scheme.fmt.signed_codes)
    return QTensor(packed, params, qt.scheme, qt.shape, qt.dtype, qt.axis)


def _hf_name(gguf_name: str) -> str:
    name = rename(gguf_name, to_gguf=False)
    if name is None:
        raise UnsupportedError(f"GGUF tensor {gguf_name!r} has no place in a transformers Llama model.")
    return name


def _config(meta: dict[str, Any], has_output: bool) -> Any:
    import transformers

    if meta.get("general.architecture") != "llama":
        raise UnsupportedError(f"load_gguf_llama reads 'llama' files, not {meta.get('general.architecture')!r}.")
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    return transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(meta["llama.feed_forward_length"]),
        num_hidden_layers=int(meta["llama.block_count"]),
        num_attention_heads=heads,
        num_key_value_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        head_dim=int(meta.get("llama.rope.dimension_count", hidden // heads)),
        vocab_size=int(vocab),
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
        rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0))},
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        tie_word_embeddings=not has_output,
    )


def load_gguf_llama(path: str | os.PathLike[str]) -> nn.Module:
    """Build a transformers ``LlamaForCausalLM`` from a GGUF file, quantized tensors kept packed.

    Args:
        path: a ``llama`` GGUF file with Q8_0 / Q4_0 / Q4_1 / Q4_K / F16 / F32 tensors.

    Returns:
        The model in eval mode (float32 compute); quantized weights are QTensors in packed quanta modules.

    Raises:
        CorruptDataError, UnsupportedError: see :func:`quanta.export.gguf_import.read_gguf`; also a file that is
            not a Llama model.
    """
    import transformers

    from quanta.lm.hf import _parameters_on_meta

    contents = read_gguf(path)
    config = _config(contents.metadata, "output.weight" in contents.tensors)
    with _parameters_on_meta():
        model = transformers.LlamaForCausalLM(config)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for gguf_name, value in contents.tensors.items():
        name = _hf_name(gguf_name)
        module_name = name.rpartition(".")[0]
        if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            n = heads if gguf_name.endswith("attn_q.weight") else kv_heads
            order = torch.argsort(_rope_permutation(value.shape[0], n))  # back to rotate-half rows
            value = permute_rows(value, order) if isinstance(value, QTensor) else value[order]
        module = model.get_submodule(module_name)
        if isinstance(value, QTensor):
            packed: nn.Module = (
                QuantEmbedding.from_float(module, value)
                if isinstance(module, nn.Embedding)
                else QuantLinear.from_float(module, value)
            )
            model.set_submodule(module_name, packed)
        else:
            module._parameters["weight"] = nn.Parameter(value.float().contiguous(), requires_grad=False)
    if config.tie_word_embeddings:
        embed = model.model.embed_tokens
        if isinstance(embed, QuantEmbedding):
            model.set_submodule("lm_head", QuantLinear(config.hidden_size, config.vocab_size, embed.qweight, None))
        else:
            model.lm_head.weight = embed.weight
    return model.eval()
