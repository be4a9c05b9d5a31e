"""Hugging Face models: load_hf from local directories, and quanta.save / quanta.load of quantized HF models
rebuilt from config.json without a skeleton (stories260K, a random-init tiny GPT-2 with its Conv1D)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import quanta
from quanta.errors import QuantaError
from quanta.lm import is_hf_model, load_hf

transformers = pytest.importorskip("transformers")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STORIES = DATA / "stories260K_hf"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(), reason=f"{STORIES} (shared real data) is not present")


def _tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


@needs_stories
def test_load_hf_gives_float32_eval_model_and_tokenizer() -> None:
    model, tokenizer = load_hf(STORIES)
    assert is_hf_model(model) and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    # SOURCE.md: greedy decoding from BOS starts 1, 403, 407, 261, 378.
    out = model.generate(torch.tensor([[1]]), max_new_tokens=4, do_sample=False)
    assert out[0].tolist() == [1, 403, 407, 261, 378]
    assert tokenizer.decode([403, 407, 261, 378]).startswith("Once upon a time")


@needs_stories
def test_quantized_stories_reloads_bit_identically_without_skeleton(tmp_path: Path) -> None:
    model, _ = load_hf(STORIES)
    quanta.quantize(model, "w4a16-g32")
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).logits
    path = quanta.save(model, tmp_path / "q")
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "quanta.json", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((path / "quanta.json").read_text())["hf"] == {"class": "LlamaForCausalLM"}
    loaded = quanta.load(path)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.training
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied embeddings stay one Parameter
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)
    again, tokenizer = load_hf(path)  # a quanta directory loads quantized, with its tokenizer
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)
    assert tokenizer.encode("Once upon a time", add_special_tokens=False)
    resaved = quanta.save(loaded, tmp_path / "q2")  # the tokenizer files follow the model
    assert (resaved / "tokenizer.json").read_bytes() == (STORIES / "tokenizer.json").read_bytes()


def test_random_gpt2_with_conv1d_reloads_bit_identically(tmp_path: Path) -> None:
    model = quanta.quantize(_tiny_gpt2(), "w4a16-g32")
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "QuantHFConv1D"
    x = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).logits
    loaded = quanta.load(quanta.save(model, tmp_path / "g"))
    assert type(loaded).__name__ == "GPT2LMHeadModel" and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)


def test_load_hf_refuses_missing_and_non_model_directories(tmp_path: Path) -> None:
    with pytest.raises(QuantaError, match="not a directory"):
        load_hf(tmp_path / "missing")
    with pytest.raises(QuantaError, match=r"config\.json"):
        load_hf(tmp_path)


def test_load_hf_without_tokenizer_says_so(tmp_path: Path) -> None:
    _tiny_gpt2().save_pretrained(tmp_path)
    with pytest.raises(QuantaError, match="tokenizer"):
        load_hf(tmp_path)


def test_missing_transformers_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(QuantaError, match=r"pip install 'quanta\[hf\]'"):
        load_hf(tmp_path)


@pytest.mark.parametrize("method", ["gptq", "awq", "awq_gptq", "gptqact"])
def test_data_aware_methods_quantize_gpt2_conv1d_layers(method: str) -> None:
    import warnings

    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 100, (4, 32), generator=g) for _ in range(4)]
    held = torch.randint(0, 100, (4, 32), generator=g)
    float_model = _tiny_gpt2()
    with torch.no_grad():
        reference = float_model(held).logits

    def error(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((model(held).logits - reference).pow(2).mean())

    rtn = quanta.quantize(_tiny_gpt2(), "w3a16-g16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "does not handle ... using rtn" fallback
        model = quanta.quantize(_tiny_gpt2(), f"w3a16-g16-{method}", calib)
    layer = model.transformer.h[0].attn.c_attn
    assert type(layer).__name__ == "QuantHFConv1D"
    assert layer.qweight.axis == 0 and tuple(layer.qweight.shape) == (32, 96)
    assert error(model) < error(rtn)
