"""The ``q4_k`` preset -> GGUF Q4_K with no requantization: gguf's own reader and Q4_K dequantizer give exactly
quanta's dequantized weights, and reading the file back gives ``q4_k`` QTensors that re-export to its bytes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import quanta
from quanta.export import export
from quanta.export.gguf_codec import encode, lossless_type
from quanta.export.gguf_import import read_gguf
from quanta.nn.base import QuantModule
from tests.export.test_gguf import _reference, _tiny_llama, needs_stories

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 64  # _tiny_llama(hidden=256)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _interleave(heads: int) -> torch.Tensor:
    # llama.cpp's rope pairs rows (i, i + half) of each head: rotate-half -> interleaved order
    return torch.arange(heads * HEAD_DIM).reshape(heads, 2, HEAD_DIM // 2).transpose(1, 2).reshape(-1)


@needs_stories
def test_q4_k_preset_goes_to_gguf_q4_k_bit_exactly(tmp_path: Path) -> None:
    model = quanta.quantize(_tiny_llama(hidden=256, layers=2), "q4_k")
    path = tmp_path / "q4k.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a requantization would warn
        result = export(model, "gguf", path)
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, QuantModule) or ".layers." not in name:
            continue
        layer, proj = name.split(".layers.")[1].split(".", 1)
        gguf_name = {
            "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down",
        }[proj]
        t = by_name[f"blk.{layer}.{gguf_name}.weight"]
        assert t.tensor_type == T.Q4_K
        ours = module.qweight.dequantize().float()
        if gguf_name in ("attn_q", "attn_k"):
            ours = ours[_interleave(HEADS if gguf_name == "attn_q" else KV_HEADS)]
        assert torch.equal(_reference(t.data, "Q4_K", tuple(ours.shape)), ours)
        checked += 1
    assert checked == 2 * 7
    q4k = {k: v for k, v in result.quantized.items() if "q4_k" in v}
    assert len(q4k) == 2 * 7 and all(v.startswith("q4_k:g256:sf16 -> Q4_K lossless") for v in q4k.values())


@needs_stories
def test_q4_k_file_reads_back_as_q4_k_and_reexports_the_same_bytes(tmp_path: Path) -> None:
    model = quanta.quantize(_tiny_llama(hidden=256), "q4_k")
    path = tmp_path / "q4k.gguf"
    export(model, "gguf", path)
    contents = read_gguf(path)
    seen = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        value = contents.tensors[t.name]
        if contents.types[t.name] != "Q4_K":
            continue
        assert isinstance(value, quanta.QTensor) and str(value.scheme) == "q4_k:g256:sf16"
        assert lossless_type(value) == ("Q4_K", "")
        assert np.array_equal(encode(value, "Q4_K").reshape(-1), np.asarray(t.data).reshape(-1))
        assert torch.equal(value.dequantize(), _reference(t.data, "Q4_K", tuple(value.shape)))
        seen += 1
    assert seen == 7


@needs_stories
def test_q4_k_gguf_read_back_as_a_model_gives_identical_logits(tmp_path: Path) -> None:
    from quanta.export.gguf_model import load_gguf_llama

    model = quanta.quantize(_tiny_llama(hidden=256), "q4_k")
    export(model, "gguf", tmp_path / "k.gguf", float_type="f32")  # F32 floats: nothing rounded on the way
    back = load_gguf_llama(tmp_path / "k.gguf")
    q_proj = back.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, QuantModule) and str(q_proj.qweight.scheme) == "q4_k:g256:sf16"
    ids = torch.tensor([[1, 403, 407, 261, 378, 432, 383, 286]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
