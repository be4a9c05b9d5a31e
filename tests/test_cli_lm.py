"""The language-model commands (quanta quantize on a transformers directory, quanta eval, quanta generate) on the
real stories260K, against the Python API; skipped without ../shared/data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import quanta
from quanta.cli import app

pytest.importorskip("transformers")
runner = CliRunner()
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SRC = DATA / "stories260K_hf"
TEXT = DATA / "tinystories_val" / "tinystories_val.txt"
pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason=f"{SRC} (shared real data) is not present")


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A calibration text and a disjoint evaluation text, cut from tinystories_val."""
    folder = tmp_path_factory.mktemp("text")
    text = TEXT.read_text(encoding="utf-8")
    calib, evaluation = folder / "calib.txt", folder / "eval.txt"
    calib.write_text(text[:60_000], encoding="utf-8")
    evaluation.write_text(text[-40_000:], encoding="utf-8")
    return calib, evaluation


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, texts: tuple[Path, Path]) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("lm") / "q"
    args = [
        "quantize", str(SRC), "-r", "w4a16-g32-gptq", "--calib", str(texts[0]), "--nsamples", "8", "--seqlen", "128",
        "-o", str(out), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _fails(args: list[str], *needles: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(n in line for n in needles), line


def test_quantize_writes_a_directory_that_loads_alone(quantized: tuple[Path, dict[str, object]]) -> None:
    out, report = quantized
    assert report["reloaded_bit_identical"] is True and report["packed_modules"] == 35  # 5 blocks x 7 linears
    assert report["calib"]["windows"] == 8 and report["calib"]["seqlen"] == 128  # type: ignore[index]
    assert {"model.safetensors", "quanta.json", "config.json"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("tokenizer") for p in out.iterdir())
    loaded = quanta.load(out)  # no skeleton: rebuilt from config.json
    assert quanta.model_nbytes(loaded) == report["nbytes"] < report["float_nbytes"]  # type: ignore[operator]


def test_offloaded_resumable_quantize_writes_the_same_model(
    tmp_path: Path, texts: tuple[Path, Path], quantized: tuple[Path, dict[str, object]]
) -> None:
    out = tmp_path / "offloaded"
    args = [
        "quantize", str(SRC), "-r", "w4a16-g32-gptq", "--calib", str(texts[0]), "--nsamples", "8", "--seqlen", "128",
        "-o", str(out), "--offload", "--resume", "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["offload"] is True and report["float_nbytes"] == quantized[1]["float_nbytes"]
    # Same blocks, same inputs, same methods: the file of the in-memory run, byte for byte.
    assert (out / "model.safetensors").read_bytes() == (quantized[0] / "model.safetensors").read_bytes()
    assert not (tmp_path / ".offloaded.resume").exists()  # the per-block state goes once the model is saved
    _fails(["quantize", str(SRC), "-r", "w8a16", "--offload", "-o", str(tmp_path / "x")], "--calib FILE.txt")
    _fails(["quantize", str(quantized[0]), "-r", "w8a16", "-o", str(tmp_path / "y")], "already quantized")


def test_eval_matches_the_api_and_compares_with_the_float_model(
    quantized: tuple[Path, dict[str, object]], texts: tuple[Path, Path]
) -> None:
    from quanta.eval import mean_nll, next_token_agreement
    from quanta.lm import load_hf, tokenize_file

    out, _ = quantized
    args = ["eval", str(out), "--ppl", str(texts[1]), "--ref", str(SRC), "--seqlen", "128", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    model, tokenizer = load_hf(out)
    reference, _ = load_hf(SRC)
    ids = tokenize_file(texts[1], tokenizer)
    assert report["tokens"] == ids.numel()
    assert report["perplexity"] == pytest.approx(math.exp(mean_nll(model, ids, 128)), rel=1e-9)
    agreement = next_token_agreement(reference, model, ids, 128)
    assert report["reference"]["kl"] == pytest.approx(agreement.kl, rel=1e-9)
    assert report["reference"]["top1_agreement"] == pytest.approx(agreement.top1)
    assert 0 < report["reference"]["kl"] < 0.5 and 0.5 < report["reference"]["top1_agreement"] < 1
    assert report["reference"]["perplexity"] < report["perplexity"]  # 4-bit costs something


def test_generate_is_greedy_and_reproduces_the_model_before_saving(
    quantized: tuple[Path, dict[str, object]], tmp_path: Path, texts: tuple[Path, Path]
) -> None:
    from quanta.lm import calibration_windows, load_hf, quantize_sequential, tokenize_file

    out, _ = quantized
    result = runner.invoke(
        app, ["generate", str(out), "--prompt", "Once upon a time", "--max-new-tokens", "16", "--json"]
    )
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["tokens"]
    assert len(tokens) == 16
    # The same recipe and data through the API, generated before saving: the same tokens.
    model, tokenizer = load_hf(SRC)
    windows = calibration_windows(tokenize_file(texts[0], tokenizer), n=8, length=128, seed=0)
    quantize_sequential(model, "w4a16-g32-gptq", list(windows.split(8)))  # as the CLI quantizes
    ids = torch.tensor([tokenizer.encode("Once upon a time")])
    with torch.no_grad():
        direct = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert direct[0, ids.shape[1] :].tolist() == tokens


def test_language_model_inputs_are_checked(tmp_path: Path, texts: tuple[Path, Path]) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.", encoding="utf-8")
    _fails(["quantize", str(SRC), "-r", "w4a16-g32-gptq", "--calib", str(short), "-o", str(tmp_path / "a")], "fewer")
    _fails(["quantize", str(SRC), "-r", "w4a16-g32-gptq", "-o", str(tmp_path / "b")], "--calib FILE.txt")
    npz = tmp_path / "x.npz"
    npz.write_bytes(b"")
    _fails(["quantize", str(SRC), "-r", "w8a16", "--calib", str(npz), "-o", str(tmp_path / "c")], "text file")
    existing = tmp_path / "exists"
    existing.mkdir()
    _fails(["quantize", str(SRC), "-r", "w8a16", "-o", str(existing)], "--overwrite")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    _fails(["quantize", str(not_a_model), "-r", "w8a16", "-o", str(tmp_path / "d")], "config.json")
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(SRC / name, no_tokenizer / name)
    _fails(["eval", str(no_tokenizer), "--ppl", str(texts[1])], "tokenizer")
    _fails(["eval", str(SRC), "--ppl", str(short), "--seqlen", "128"], "fewer than one window")


def test_kv4_preset_calibrates_per_channel_key_scales_that_beat_per_token_ones(
    tmp_path: Path, texts: tuple[Path, Path]
) -> None:
    out = tmp_path / "kv4"
    args = [
        "quantize", str(SRC), "-r", "w8a16+kv4", "--calib", str(texts[0]), "--nsamples", "8", "--seqlen", "128",
        "-o", str(out), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kv_key_scales"] == "calibrated"
    ppl = {}
    for name, model in (("calibrated", str(out)),):
        result = runner.invoke(app, ["eval", model, "--ppl", str(texts[1]), "--seqlen", "128", "--json"])
        assert result.exit_code == 0, result.output
        ppl[name] = json.loads(result.stdout)["perplexity"]
    from quanta.eval import mean_nll
    from quanta.lm import load_hf, tokenize_file
    from quanta.lm.kv_cache import KEY_SCALE_BUFFER, with_kv_cache

    model, tokenizer = load_hf(out)
    ids = tokenize_file(texts[1], tokenizer)
    assert ppl["calibrated"] == pytest.approx(math.exp(mean_nll(with_kv_cache(model, 4), ids, 128)), rel=1e-9)
    del model._buffers[KEY_SCALE_BUFFER]  # the same model with per-token key scales
    per_token = math.exp(mean_nll(with_kv_cache(model, 4), ids, 128))
    assert ppl["calibrated"] < 0.8 * per_token
