"""``quanta sweep`` on zoo:lenet5 with .npz files and on stories260K_hf with a small text file, each point checked
against the model quantized alone through the Python API; the plot decodes; named errors. Skipped without
../shared/data."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import quanta
from quanta.cli import app
from quanta.eval import accuracy, mean_nll

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
    np.savez(folder / "calib.npz", x=x[:64].numpy())
    np.savez(folder / "test.npz", x=x[5000:5200].numpy(), y=y[5000:5200].numpy())
    return folder / "calib.npz", folder / "test.npz"


def test_cli_lenet_matches_the_api(mnist_npz: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from quanta.zoo import load_pretrained

    calib, test = mnist_npz
    plot, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    args = [
        "sweep", f"zoo:lenet5={LENET}", "--bits", "2,8", "--methods", "rtn,gptq", "--groups", "ch",
        "--calib", str(calib), "--eval", str(test), "--rounds", "1", "--plot", str(plot), "-o", str(out), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["recipe"] for p in data["points"]] == ["w2a16", "w2a16-gptq", "w8a16", "w8a16-gptq"]
    assert json.loads(out.read_text())["points"] == data["points"]  # the -o file holds the same table
    arrays = np.load(test)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    net = load_pretrained("lenet5", LENET)
    for point in data["points"]:
        alone = quanta.quantize(copy.deepcopy(net), point["recipe"], calib=[torch.from_numpy(np.load(calib)["x"])])
        assert point["nbytes"] == quanta.model_nbytes(alone)
        assert point["quality"] == accuracy(alone, (x, y))
    assert data["reference"]["quality"] == accuracy(net, (x, y))
    on_front = [p["recipe"] for p in data["points"] if p["front_bytes"]]
    assert on_front and all(p["front_bytes"] is (p["recipe"] in on_front) for p in data["points"])
    with Image.open(plot) as image:
        image.load()
        assert image.format == "PNG"

    table = runner.invoke(app, args[:-5])  # the same sweep as a table
    assert table.exit_code == 0, table.output
    assert "w8a16-gptq" in table.stdout and "Pareto front" in table.stdout


def test_cli_named_errors(mnist_npz: tuple[Path, Path]) -> None:
    calib, test = mnist_npz
    model = f"zoo:lenet5={LENET}"
    cases = [
        (["--methods", "gptq", "--eval", str(test)], "no combination of the sweep could run: w2a16-gptq: method gptq"),
        (["--eval", str(test), "--methods", "lsq"], "w2a16-lsq: lsq learns its step sizes during training"),
        (["--calib", str(calib)], "evaluation set is missing: pass --eval FILE.npz"),
        (["--ppl", str(TEXT), "--eval", str(test)], "--ppl is for language models"),
        (["--eval", str(test), "--groups", "32,x"], "positive group size or 'ch'"),
        (["--eval", str(test), "--bits", "four"], "comma-separated whole numbers"),
        (["--eval", str(test), "--methods", "gtpq"], "'gtpq' is not available"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["sweep", model, "--bits", "2", "--groups", "ch", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.stderr.split()), (extra, result.stderr)


def test_cli_stories_perplexity_and_kl(tmp_path: Path) -> None:
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} (shared real data) is not present")
    from quanta.lm import load_hf, tokenize_file

    text = tmp_path / "tiny.txt"
    text.write_text(TEXT.read_text()[:2500])
    args = ["sweep", str(STORIES), "--bits", "2,8", "--groups", "32", "--ppl", str(text), "--seqlen", "64"]
    result = runner.invoke(app, [*args, "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    model, tokenizer = load_hf(STORIES)
    ids = tokenize_file(text, tokenizer)
    n = ids.numel() // 64
    windows = ids[: n * 64].view(n, 64)
    for point in data["points"]:
        alone = quanta.quantize(copy.deepcopy(model), point["recipe"])
        assert point["nbytes"] == quanta.model_nbytes(alone)
        assert point["quality"] == pytest.approx(math.exp(mean_nll(alone, ids, 64)), rel=1e-9)
        with torch.no_grad():  # KL(float || quantized) per next-token position, by torch's own kl_div
            log_p = F.log_softmax(model(windows).logits[:, :-1].float(), -1).flatten(0, 1)
            log_q = F.log_softmax(alone(windows).logits[:, :-1].float(), -1).flatten(0, 1)
        assert point["kl"] == pytest.approx(
            float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")), rel=1e-4
        )
    assert data["points"][0]["nbytes"] < data["points"][1]["nbytes"] < data["reference"]["nbytes"]

    missing = runner.invoke(app, ["sweep", str(STORIES), "--bits", "8", "--groups", "32"])
    assert missing.exit_code == 2 and "pass --ppl FILE.txt" in missing.stderr
