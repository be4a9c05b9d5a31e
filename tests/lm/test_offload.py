"""Offloaded sequential quantization: blocks read from safetensors shards one at a time, same result as in memory."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta.lm.sequential as sequential
from quanta.errors import CorruptDataError, QuantaError
from quanta.lm import load_offloaded, quantize_sequential

transformers = pytest.importorskip("transformers")


def _llama(tie: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _steps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 96, (2, 24), generator=g) for _ in range(4)]


def _float_linears_in_blocks(model: nn.Module) -> int:
    return sum(1 for n, m in model.named_modules() if ".layers." in n and type(m) is nn.Linear and not m.weight.is_meta)


@pytest.mark.parametrize("tie", [False, True])
def test_offloaded_run_equals_the_in_memory_run_with_one_float_block_at_a_time(
    tie: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _llama(tie)
    model.save_pretrained(tmp_path / "src", max_shard_size="60KB")  # several shards, blocks split across them
    assert len(list((tmp_path / "src").glob("*.safetensors"))) > 3
    in_memory = quantize_sequential(copy.deepcopy(model), "w4a16-g32-gptq", _steps())

    offloaded = load_offloaded(tmp_path / "src")
    assert all(p.is_meta for p in offloaded.model.layers.parameters())  # no block read yet
    assert not offloaded.model.embed_tokens.weight.is_meta
    assert (offloaded.lm_head.weight is offloaded.model.embed_tokens.weight) == tie
    seen: list[int] = []
    earlier: list[weakref.ref[torch.Tensor]] = []
    materialize = sequential.materialize

    def counting(block: nn.Module, prefix: str, weights: object) -> int:
        read = materialize(block, prefix, weights)  # type: ignore[arg-type]
        seen.append(_float_linears_in_blocks(offloaded))
        assert all(ref() is None for ref in earlier)  # the float weights of packed blocks are freed, not only unlinked
        earlier.append(weakref.ref(block.mlp.down_proj.weight))
        return read

    monkeypatch.setattr(sequential, "materialize", counting)
    quantize_sequential(offloaded, "w4a16-g32-gptq", _steps())
    assert seen == [7, 7, 7]  # each block's 7 linears in float while it is quantized, the earlier ones packed
    assert not any(t.is_meta for t in [*offloaded.parameters(), *offloaded.buffers()])
    with torch.no_grad():
        assert torch.equal(offloaded(_steps()[0]).logits, in_memory(_steps()[0]).logits)


def test_a_bare_model_checkpoint_loads_under_the_head_model(tmp_path: Path) -> None:
    # GPT-2 checkpoints are often the bare GPT2Model ("h.0.attn...", no "transformer." prefix, tied head).
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32)
    bare = transformers.GPT2Model(config).eval()
    bare.save_pretrained(tmp_path / "gpt2")
    model = load_offloaded(tmp_path / "gpt2")
    assert type(model).__name__ == "GPT2LMHeadModel" and model.lm_head.weight is model.transformer.wte.weight
    in_memory = transformers.GPT2LMHeadModel(config).eval()
    in_memory.transformer.load_state_dict(bare.state_dict())
    steps = [torch.randint(0, 50, (1, 16))]
    quantize_sequential(model, "w8a16", steps)
    quantize_sequential(in_memory, "w8a16", steps)
    with torch.no_grad():
        assert torch.equal(model(steps[0]).logits, in_memory(steps[0]).logits)


def test_missing_and_truncated_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(QuantaError, match=r"no model\.safetensors"):
        (tmp_path / "empty").mkdir()
        _llama().config.save_pretrained(tmp_path / "empty")
        load_offloaded(tmp_path / "empty")
    _llama().save_pretrained(tmp_path / "src")
    data = (tmp_path / "src" / "model.safetensors").read_bytes()
    (tmp_path / "src" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        load_offloaded(tmp_path / "src")
