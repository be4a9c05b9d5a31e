"""``quanta sensitivity`` on zoo:lenet5 with an .npz and on stories260K_hf with a text file, against the Python API
on the same data; and its named errors. Skipped without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import quanta
from quanta.cli import app
from quanta.eval import mean_nll
from quanta.eval.sensitivity_result import Sensitivity

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LENET, MNIST = DATA / "lenet5_mnist" / "mnist_cnn.pt", DATA / "mnist_test"
STORIES, TEXT = DATA / "stories260K_hf", DATA / "tinystories_val" / "tinystories_val.txt"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not LENET.is_file():
        pytest.skip(f"{LENET} (shared real data) is not present")
    from quanta.zoo import mnist_test

    x, y = mnist_test(MNIST)
    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "calib.npz", x=x[:64].numpy())  # no labels: fine for calibration
    np.savez(folder / "test.npz", x=x[2000:2200].numpy(), y=y[2000:2200].numpy())
    return folder / "calib.npz", folder / "test.npz"


def test_cli_lenet_npz_matches_the_api(mnist_npz: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    calib, test = mnist_npz
    plot, out = tmp_path / "bars.png", tmp_path / "sens.json"
    args = [
        "sensitivity", f"zoo:lenet5={LENET}", "--calib", str(calib), "--accuracy", str(test),
        "-c", "w2a16,w8a16", "--plot", str(plot), "-o", str(out), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metric"] == "accuracy" and len(data["entries"]) == 10
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = Sensitivity.from_json(out.read_text())

    from quanta.zoo import load_pretrained

    arrays = np.load(test)
    test_data = (torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))
    api = quanta.sensitivity(
        load_pretrained("lenet5", LENET),
        ["w2a16", "w8a16"],
        [torch.from_numpy(np.load(calib)["x"])],
        "accuracy",
        eval_data=test_data,
    )
    assert written == api
    assert [e["effect"] for e in data["entries"]] == [e.effect for e in api.entries]


def test_cli_table_and_errors(mnist_npz: tuple[Path, Path], tmp_path: Path) -> None:
    calib, _ = mnist_npz
    model = f"zoo:lenet5={LENET}"
    result = runner.invoke(app, ["sensitivity", model, "--calib", str(calib), "-c", "w4a16", "--no-plot"])
    assert result.exit_code == 0, result.output
    for text in ("one layer quantized at a time", "fc.f7", "Spearman", "hessian_diag"):
        assert text in result.stdout
    cases = [
        (["--metric", "accuracy"], "needs an evaluation set"),
        (["--accuracy", str(calib)], "no array 'y'"),  # the calibration file has no labels
        (["--ppl", str(calib)], "--ppl is for language models"),
        (["-c", " , "], "--candidates is empty"),
    ]
    for extra, needle in cases:
        bad = runner.invoke(app, ["sensitivity", model, "--calib", str(calib), "--no-plot", *extra])
        assert bad.exit_code == 2 and needle in bad.stderr, (extra, bad.output)


@pytest.mark.skipif(not STORIES.is_dir(), reason=f"{STORIES} (shared real data) is not present")
def test_cli_stories_text_loss(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    text = TEXT.read_text(encoding="utf-8")
    calib, ppl = tmp_path / "calib.txt", tmp_path / "eval.txt"
    calib.write_text(text[:8_000], encoding="utf-8")
    ppl.write_text(text[-4_000:], encoding="utf-8")
    args = [
        "sensitivity", str(STORIES), "--calib", str(calib), "--ppl", str(ppl), "-c", "w2a16-g32",
        "--layers", "*.layers.0.mlp.*", "--nsamples", "2", "--seqlen", "64", "--max-tokens", "300", "--no-plot",
        "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metric"] == "loss"
    assert [e["layer"] for e in data["entries"]] == [
        f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")
    ]
    from quanta.lm import load_hf, tokenize_file

    model, tokenizer = load_hf(STORIES)
    assert data["float_value"] == mean_nll(model, tokenize_file(ppl, tokenizer)[:300], 64)  # the API on the same tokens
    assert all(e["effect"] > 0 for e in data["entries"])  # 2-bit MLP weights raise the loss
    lm_bad = runner.invoke(app, ["sensitivity", str(STORIES), "--calib", str(calib), "--metric", "loss", "--no-plot"])
    assert lm_bad.exit_code == 2 and "--ppl FILE.txt" in lm_bad.stderr
