"""The report card: `quanta quantize` writes report.json + report.html, checked against quanta.json, the float model
and independent recomputations; `quanta report DIR` regenerates the same JSON. Real LeNet-5/MNIST and stories260K."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import quanta
from quanta.cli import app
from quanta.eval import accuracy, layer_errors, perplexity
from quanta.report import render_html
from quanta.zoo import load_pretrained, mnist_test

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")
runner = CliRunner()
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEIGHTS = DATA / "lenet5_mnist" / "mnist_cnn.pt"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} (shared real data) is not present")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")


def _decoded_images(html: str) -> list[tuple[int, int]]:
    parser = _Images()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags  # self-contained, nothing to fetch
    sizes = []
    for src in parser.srcs:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        sizes.append(image.size)
    return sizes


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.set_num_threads(1)
    x, y = mnist_test(DATA / "mnist_test")
    root = tmp_path_factory.mktemp("report")
    np.savez(root / "calib.npz", x=x[:128].numpy())
    np.savez(root / "eval.npz", x=x[-200:].numpy(), y=y[-200:].numpy())
    out = root / "lenet"
    args = ["quantize", f"zoo:lenet5={WEIGHTS}", "-r", "w8a8", "-o", str(out), "--calib", str(root / "calib.npz")]
    result = runner.invoke(app, [*args, "--eval", str(root / "eval.npz"), "--json"])
    assert result.exit_code == 0, result.output
    return {"dir": out, "cli": json.loads(result.stdout), "test": (x[-200:], y[-200:]), "root": root}


def test_html_is_self_contained_and_every_image_decodes(lenet: dict[str, object]) -> None:
    out = Path(str(lenet["dir"]))
    assert lenet["cli"]["report"] == str(out / "report.html")  # type: ignore[index]
    sizes = _decoded_images((out / "report.html").read_text(encoding="utf-8"))
    assert len(sizes) == 5  # bytes, per-layer error, histograms, robustness, energy
    assert all(w > 100 and h > 100 for w, h in sizes)


def test_json_agrees_with_quanta_json_and_the_float_model(lenet: dict[str, object]) -> None:
    out = Path(str(lenet["dir"]))
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "quanta.json").read_text())
    loaded = quanta.load(out)
    float_net = load_pretrained("lenet5", WEIGHTS)
    assert report["bytes"]["quantized"] == config["model_nbytes"] == quanta.model_nbytes(loaded)
    assert report["bytes"]["float"] == quanta.model_nbytes(float_net) == lenet["cli"]["float_nbytes"]  # type: ignore[index]
    assert [r["name"] for r in report["layers"]] == list(config["modules"])
    for row in report["layers"]:
        entry = config["modules"][row["name"]]
        assert (row["scheme"], row["kernel"], row["nbytes"]) == (entry["scheme"], entry["kernel"], entry["nbytes"])
        assert row["method"] == "rtn" and row["activation"] == entry["activation"]
    assert report["provenance"]["calibration_sha256"] == config["provenance"]["calibration_sha256"]
    assert report["provenance"]["torch_seed"] == config["provenance"]["torch_seed"]
    x, y = lenet["test"]  # type: ignore[misc]
    assert report["quality"]["accuracy"] == accuracy(loaded, (x, y)) == lenet["cli"]["eval"]["accuracy"]  # type: ignore[index]
    assert report["quality"]["float_accuracy"] == accuracy(float_net, (x, y))


def test_a_layers_error_recomputed_from_the_checkpoint_files(lenet: dict[str, object]) -> None:
    out = Path(str(lenet["dir"]))
    report = json.loads((out / "report.json").read_text())
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    loaded = quanta.load(out)
    for row in report["layers"]:
        w = state[f"{row['name']}.weight"].double()
        w_q = loaded.get_submodule(row["name"]).qweight.dequantize().double()
        rel = float(((w - w_q) ** 2).sum() / (w**2).sum())
        assert math.isclose(row["weight_rel_mse"], rel, rel_tol=1e-9)
    float_net = load_pretrained("lenet5", WEIGHTS)
    peers = layer_errors(float_net, loaded, [lenet["test"][0][:64]])  # type: ignore[index]
    for row, peer in zip(report["layers"], peers, strict=True):
        assert math.isclose(row["weight_sqnr_db"], peer.weight_sqnr_db, rel_tol=1e-9)
        assert math.isclose(row["output_sqnr_db"], peer.output_sqnr_db, rel_tol=1e-9)


def test_histogram_levels_are_the_groups_integer_grid(lenet: dict[str, object]) -> None:
    out = Path(str(lenet["dir"]))
    report = json.loads((out / "report.json").read_text())
    loaded = quanta.load(out)
    worst = max(report["layers"], key=lambda r: r["weight_rel_mse"])
    h = report["histograms"][0]
    assert h["layer"] == worst["name"] and h["source"] == "float model"
    qt = loaded.get_submodule(h["layer"]).qweight
    assert sum(h["counts"]) == qt.numel
    row, group = h["levels_group"]
    scale = float(qt.params["scale"][row, group])  # int8:ch symmetric: levels are scale * k, k = -128..127
    assert np.allclose(h["levels"], scale * np.arange(-128, 128), rtol=1e-6, atol=0)
    # the chosen group is the widest: its scale is the largest of the layer
    assert scale == float(qt.params["scale"].max())


def test_report_command_regenerates_identical_json(lenet: dict[str, object]) -> None:
    out = Path(str(lenet["dir"]))
    before = (out / "report.json").read_bytes()
    (out / "report.html").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote the report" in result.output
    assert (out / "report.json").read_bytes() == before
    assert len(_decoded_images((out / "report.html").read_text(encoding="utf-8"))) == 5


def test_report_without_sources_still_computes_what_it_can(lenet: dict[str, object], tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(Path(str(lenet["dir"])), copy)
    (copy / "report.json").unlink()
    result = runner.invoke(app, ["report", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["quality"] is None and report["robustness"] is None
    assert report["bytes"]["float"] == 246_824  # from the packed shapes and dtypes, equal to the float model's
    for row in report["layers"]:  # no float model: the step^2/12 estimate, near the measured error
        assert row["error_source"].startswith("estimate")
    measured = json.loads((Path(str(lenet["dir"])) / "report.json").read_text())["layers"]
    for est, real in zip(report["layers"], measured, strict=True):
        assert 0.5 < est["weight_rel_mse"] / real["weight_rel_mse"] < 2.0


def test_no_report_and_bad_directories(lenet: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "plain"
    result = runner.invoke(app, ["quantize", f"zoo:lenet5={WEIGHTS}", "-r", "w8a16", "-o", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    assert (out / "quanta.json").is_file() and not (out / "report.json").exists()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "has no quanta.json" in result.stderr


def test_every_string_is_escaped(lenet: dict[str, object]) -> None:
    report = json.loads((Path(str(lenet["dir"])) / "report.json").read_text())
    report["layers"][0]["name"] = "<script>alert(1)</script>"
    report["model_dir"] = 'a"><img src=x onerror=alert(1)>'
    page = render_html(report)
    assert "<script>" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


LM = DATA / "stories260K_hf"


@pytest.mark.skipif(not LM.is_dir(), reason=f"{LM} (shared real data) is not present")
def test_language_model_report_has_perplexity_and_kl(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from quanta.lm import load_hf, tokenize_file

    text = (DATA / "tinystories_val" / "tinystories_val.txt").read_text(encoding="utf-8")
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text(text[-5000:], encoding="utf-8")
    out = tmp_path / "lm"
    args = ["quantize", str(LM), "-r", "w4a16-g32", "-o", str(out), "--eval", str(evaluation), "--seqlen", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    q = report["quality"]
    loaded, tokenizer = load_hf(out)
    reference, _ = load_hf(LM)
    ids = tokenize_file(evaluation, tokenizer)
    assert q["kind"] == "perplexity" and q["tokens"] == ids.numel()
    assert math.isclose(q["perplexity"], perplexity(loaded, ids, q["seqlen"]), rel_tol=1e-9)
    assert math.isclose(q["float_perplexity"], perplexity(reference, ids, q["seqlen"]), rel_tol=1e-9)
    assert q["kl"] > 0 and q["perplexity"] > q["float_perplexity"]  # 4-bit weights cost some perplexity
    assert report["bytes"]["quantized"] == json.loads((out / "quanta.json").read_text())["model_nbytes"]
    assert report["robustness"] is None and report["energy"]["quantized"]["total_pj"] > 0
    assert len(_decoded_images((out / "report.html").read_text(encoding="utf-8"))) == 4  # no robustness plot
