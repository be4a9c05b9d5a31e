"""The command line through typer's CliRunner: every command with --json/--quiet/--seed, and one-line failures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import quanta
from quanta.cli import app
from quanta.zoo import LeNet5

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _fails(args: list[str], *needles: str) -> str:
    """Run ``args``, expect exit 2 with exactly one ``error: ...`` line on stderr mentioning every needle."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and quanta.__version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "formats", "scheme", "recipes", "inspect", "quantize"):
        assert command in result.output


@pytest.mark.parametrize("command", [["formats"], ["recipes"], ["scheme", "int4"], ["demo"], ["quantize", "x"]])
def test_every_command_takes_json_quiet_and_seed(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    for flag in ("--json", "--quiet", "--seed"):
        assert flag in result.output, (command, flag)


def test_formats_lists_every_family() -> None:
    result = runner.invoke(app, ["formats"])
    assert result.exit_code == 0
    for name in ("int8", "nf4", "fp8_e4m3", "q4.4", "binary", "ternary", "pot4", "lloyd3", "fp4_e2m1"):
        assert name in result.output
    data = json.loads(runner.invoke(app, ["formats", "--json", "--seed", "3"]).stdout)
    assert any("nf4" in f["examples"] for f in data["formats"])
    quiet = runner.invoke(app, ["formats", "--quiet"])
    assert quiet.exit_code == 0 and "nf4" in quiet.output and "Combine a format" not in quiet.output


def test_scheme_explains_and_rejects() -> None:
    result = runner.invoke(app, ["scheme", "int4:asym:g128"])
    assert result.exit_code == 0 and "int4:g128:asym" in result.output and "zero" in result.output
    data = json.loads(runner.invoke(app, ["scheme", "int4:asym:g128", "--json"]).stdout)
    assert data["canonical"] == "int4:g128:asym" and data["group_size"] == 128 and "zero" in data["stores"]
    _fails(["scheme", "int4:g0"], "group size")
    _fails(["scheme", "int4:g0", "--json"], "group size")


def test_error_messages_keep_square_brackets() -> None:
    assert "'[x]'" in _fails(["scheme", "int4:[x]"])


def test_recipes_explains_the_grammar() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for text in ("w{W}a{A}", "w4a16-g128", "int4:g128:asym:sbf16", "nf4-g64", "ternary", "bnn"):
        assert text in result.output
    data = json.loads(runner.invoke(app, ["recipes", "--json"]).stdout)
    by_name = {p["preset"]: p for p in data["presets"]}
    assert by_name["w4a16-g128"]["weights"] == "int4:g128:asym:sbf16" and "rtn" in data["methods"]


def test_inspect_a_saved_model(tmp_path: Path) -> None:
    model = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), "w8a16")
    quanta.save(model, tmp_path / "m")
    result = runner.invoke(app, ["inspect", str(tmp_path / "m")])
    assert result.exit_code == 0 and "int8:ch" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "m"), "--json", "--quiet"])
    assert result.exit_code == 0 and json.loads(result.stdout)["modules"]["0"]["scheme"] == "int8:ch"
    _fails(["inspect", str(tmp_path)], "quanta.json")
    assert "int8 flow between int8 convolutions: off" in runner.invoke(app, ["inspect", str(tmp_path / "m")]).output
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    quanta.save(quanta.quantize(conv, "w8a8", calib=[torch.randn(4, 3, 12, 12)]), tmp_path / "c")
    from quanta.kernels.int8_conv import int8_conv_available

    flow = "on" if int8_conv_available() else "off"
    assert f"int8 flow between int8 convolutions: {flow}" in runner.invoke(app, ["inspect", str(tmp_path / "c")]).output


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LeNet-5 checkpoint (random weights, seeded), calibration and evaluation .npz files, and bad inputs."""
    root = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    torch.save(LeNet5().state_dict(), root / "lenet.pt")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 32, 32, generator=gen).numpy()
    np.savez(root / "calib.npz", x=x[:64])
    np.savez(root / "eval.npz", x=x[64:], y=np.arange(32) % 10)
    np.savez(root / "wrong_shape.npz", x=x[:4, :, :28, :28])
    np.savez(root / "no_x.npz", images=x[:4])
    np.savez(root / "ints.npz", x=(x[:4] * 100).astype(np.int64))
    (root / "garbage.npz").write_bytes(b"not a zip")
    return {p.stem: p for p in root.iterdir()}


def test_quantize_writes_a_model_that_reloads_and_reports(lenet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    args = ["quantize", f"zoo:lenet5={lenet['lenet']}", "-r", "w8a8", "-o", str(out), "--calib", str(lenet["calib"])]
    result = runner.invoke(app, [*args, "--eval", str(lenet["eval"]), "--batch-size", "16", "--json", "--seed", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calib"] == {"file": str(lenet["calib"]), "images": 64, "batches": 4}
    assert report["packed_modules"] == 5 and report["reloaded_bit_identical"]
    # Independent check: the written directory reloads (no skeleton needed) and gives the reported accuracy.
    loaded = quanta.load(out)
    with np.load(lenet["eval"]) as data:
        x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    assert report["eval"]["accuracy"] == quanta.eval.accuracy(loaded, (x, y))
    assert report["eval"]["float_accuracy"] == quanta.eval.accuracy(
        quanta.zoo.load_pretrained("lenet5", lenet["lenet"]), (x, y)
    )
    assert report["nbytes"] == quanta.model_nbytes(loaded) < report["float_nbytes"] / 3
    # Calibration is bounded: --max-batches 2 of 16 images.
    again = runner.invoke(app, [*args, "--overwrite", "--batch-size", "16", "--max-batches", "2", "--quiet"])
    assert again.exit_code == 0 and "calibrated on 32 images (2 batches)" in again.output
    assert "━" not in again.output  # --quiet: no progress bar


def test_quantize_prints_what_it_did_and_per_layer_error(lenet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "w4"
    model = f"zoo:lenet5={lenet['lenet']}"
    result = runner.invoke(
        app, ["quantize", model, "-r", "w4a16-g32", "-o", str(out), "--eval", str(lenet["eval"]), "--layers"]
    )
    assert result.exit_code == 0, result.output
    for text in ("quantized lenet5", "w4a16-g32", "accuracy on 32 images", f"wrote {out}", "convnet.c1", "fc.f7"):
        assert text in result.output
    assert (out / "quanta.json").is_file() and (out / "model.safetensors").is_file()


def test_quantize_failures_are_one_line(lenet: dict[str, Path], tmp_path: Path) -> None:
    model = f"zoo:lenet5={lenet['lenet']}"
    out = str(tmp_path / "o")
    _fails(["quantize", model, "-r", "w9z", "-o", out], "unknown preset", "w8a16")
    _fails(["quantize", "zoo:lenet5=/nonexistent.pt", "-r", "w8a16", "-o", out], "does not exist")
    _fails(["quantize", "lenet5.pt", "-r", "w8a16", "-o", out], "zoo:NAME=PATH")
    _fails(["quantize", f"zoo:vgg={lenet['lenet']}", "-r", "w8a16", "-o", out], "unknown zoo model", "resnet20")
    _fails(["quantize", model, "-r", "w8a8", "-o", out], "--calib")
    _fails(["quantize", model, "-r", "w8a8", "-o", out, "--calib", str(lenet["garbage"])], "not a readable .npz")
    _fails(["quantize", model, "-r", "w8a8", "-o", out, "--calib", str(lenet["no_x"])], "no array 'x'", "images")
    _fails(["quantize", model, "-r", "w8a8", "-o", out, "--calib", str(lenet["wrong_shape"])], "(n, 1, 32, 32)")
    _fails(["quantize", model, "-r", "w8a8", "-o", out, "--calib", str(lenet["ints"])], "float images")
    _fails(["quantize", model, "-r", "w8a16", "-o", out, "--eval", str(lenet["calib"])], "no array 'y'")
    _fails(["quantize", model, "-r", "missing.json", "-o", out], "missing.json")
    assert not (tmp_path / "o").exists()  # nothing was written by any failure
    (tmp_path / "o").mkdir()
    _fails(["quantize", model, "-r", "w8a16", "-o", out], "already exists", "--overwrite")


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")
def test_quantize_the_real_lenet5(tmp_path: Path) -> None:
    from quanta.zoo import mnist_test

    x, y = mnist_test(DATA / "mnist_test")
    np.savez(tmp_path / "calib.npz", x=x[:2000].numpy())
    np.savez(tmp_path / "eval.npz", x=x[8000:].numpy(), y=y[8000:].numpy())
    weights = DATA / "lenet5_mnist" / "mnist_cnn.pt"
    args = ["quantize", f"zoo:lenet5={weights}", "-r", "w8a8", "-o", str(tmp_path / "q"), "--json"]
    result = runner.invoke(app, [*args, "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["eval"]
    assert abs(report["accuracy"] - report["float_accuracy"]) <= 0.005  # the w8a8 target on LeNet-5


def test_demo_trains_caches_reports_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "acc.png"
    result = runner.invoke(app, ["demo", "--cache-dir", str(tmp_path), "--no-data", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "trained and cached" in result.output and str(tmp_path) in result.output
    assert (tmp_path / "digits_cnn-v1.safetensors").exists()
    for text in ("int8:ch", "nf4:g64:sf16", "binary:ch", "w8a8", "w8a16", "w4a16-g32-adaround", "ternary", "speedup"):
        assert text in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {plot}" in result.output
    again = runner.invoke(app, ["demo", "--cache-dir", str(tmp_path), "--no-data", "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["model"]["trained"] is False and report["data"] is None
    rows = {r["recipe"]: r for r in report["models"]["digits"]["presets"]}
    assert set(rows) == {"float", "w8a8", "w8a16", "w4a16-g32", "w4a16-g32-adaround", "ternary", "binary"}
    assert Path(report["plot"]) == tmp_path / "demo_accuracy_vs_bytes.png" and Path(report["plot"]).is_file()


def test_demo_with_a_bad_data_dir_fails_in_one_line(tmp_path: Path) -> None:
    _fails(["demo", "--cache-dir", str(tmp_path), "--data", str(tmp_path)], "lenet5_mnist")
