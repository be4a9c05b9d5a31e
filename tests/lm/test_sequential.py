"""Block-by-block quantization (quanta.lm.quantize_sequential) on random-initialised transformers models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import QuantaError, UnsupportedError
from quanta.lm import find_blocks, quantize_sequential
from quanta.nn.base import QuantModule
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme

transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _steps(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 96, (2, 24), generator=g) for _ in range(n)]


def _codes(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.qweight.codes for n, m in model.named_modules() if isinstance(m, QuantModule)}


def test_blocks_are_found_in_llama_gpt2_and_bert() -> None:
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50))
    bert = transformers.BertModel(
        transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    )
    assert find_blocks(_llama())[0] == "model.layers" and len(find_blocks(_llama())[1]) == 3
    assert find_blocks(gpt2)[0] == "transformer.h"
    assert find_blocks(bert)[0] == "encoder.layer"
    with pytest.raises(QuantaError, match="no list of repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_data_free_recipes_give_the_one_pass_result_bit_for_bit() -> None:
    model, steps = _llama(), _steps()
    one_pass = quanta.quantize(copy.deepcopy(model), "w4a16-g32")
    sequential = quantize_sequential(copy.deepcopy(model), "w4a16-g32", steps)
    assert _codes(one_pass).keys() == _codes(sequential).keys() and len(_codes(sequential)) == 21  # 3 blocks x 7
    assert all(torch.equal(a, _codes(sequential)[n]) for n, a in _codes(one_pass).items())
    with torch.no_grad():
        assert torch.equal(one_pass(steps[0]).logits, sequential(steps[0]).logits)
    assert type(sequential.lm_head) is nn.Linear and type(sequential.model.embed_tokens) is nn.Embedding


def test_each_block_calibrates_on_the_quantized_blocks_before_it() -> None:
    model, steps = _llama(), _steps()
    one_pass = _codes(quanta.quantize(copy.deepcopy(model), "w3a16-g16-gptq", steps))
    sequential = _codes(quantize_sequential(copy.deepcopy(model), "w3a16-g16-gptq", steps))
    first = [n for n in one_pass if n.startswith("model.layers.0.")]
    later = [n for n in one_pass if n.startswith("model.layers.2.")]
    # Block 0 sees the float embeddings either way; attention of block 0 reads the same inputs too.
    assert all(torch.equal(one_pass[n], sequential[n]) for n in first if "self_attn" in n and "o_proj" not in n)
    # The last block's inputs come from quantized blocks in one run and from float ones in the other.
    assert any(not torch.equal(one_pass[n], sequential[n]) for n in later)


def test_sequential_models_save_and_reload_bit_identically(tmp_path: Path) -> None:
    model, steps = _llama(), _steps()
    q = quantize_sequential(model, "w4a16-g32-awq_gptq", steps)
    quanta.save(q, tmp_path / "m")
    loaded = quanta.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(steps[1]).logits, q(steps[1]).logits)


def test_bad_input_fails_before_anything_changes() -> None:
    model = _llama()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(QuantaError, match="calib"):
        quantize_sequential(model, "w4a16-g32-gptq", None)
    with pytest.raises(UnsupportedError, match="first and last"):
        quantize_sequential(model, "ternary", _steps())
    rule = Rule(pattern="*no_such_layer", weight=QScheme.parse("int4:g32:asym"))
    with pytest.raises(QuantaError, match="matches no module"):
        quantize_sequential(model, Recipe(rules=(rule,)), _steps())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(isinstance(m, QuantModule) for m in model.modules())
