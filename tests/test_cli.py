from pathlib import Path

from typer.testing import CliRunner

import quanta
from quanta.cli import app

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and quanta.__version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "formats", "scheme"):
        assert command in result.output


def test_formats_lists_every_family() -> None:
    result = runner.invoke(app, ["formats"])
    assert result.exit_code == 0
    for name in ("int8", "nf4", "fp8_e4m3", "q4.4", "binary", "ternary", "pot4", "lloyd3", "fp4_e2m1"):
        assert name in result.output


def test_scheme_explains_and_rejects() -> None:
    result = runner.invoke(app, ["scheme", "int4:asym:g128"])
    assert result.exit_code == 0 and "int4:g128:asym" in result.output and "zero" in result.output
    result = runner.invoke(app, ["scheme", "int4:g0"])
    assert result.exit_code == 2 and "group size" in result.output


def test_demo_trains_caches_and_reports(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "trained and cached" in result.output and str(tmp_path) in result.output
    assert (tmp_path / "digits_cnn-v1.safetensors").exists()
    for scheme in ("int8:ch", "nf4:g64:sf16", "binary:ch", "lloyd3:ch:sf16", "w8a8", "w4a16-g32", "Whole-model"):
        assert scheme in result.output
    again = runner.invoke(app, ["demo", "--cache-dir", str(tmp_path)])
    assert again.exit_code == 0 and "loaded cached" in again.output


def test_error_messages_keep_square_brackets() -> None:
    result = runner.invoke(app, ["scheme", "int4:[x]"])
    assert result.exit_code == 2 and "'[x]'" in result.output


def test_recipes_explains_the_grammar() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for text in ("w{W}a{A}", "w4a16-g128", "int4:g128:asym:sf16", "nf4-g64", "ternary", "bnn"):
        assert text in result.output


def test_inspect_a_saved_model(tmp_path: Path) -> None:
    import json

    import torch

    model = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), "w8a16")
    quanta.save(model, tmp_path / "m")
    result = runner.invoke(app, ["inspect", str(tmp_path / "m")])
    assert result.exit_code == 0 and "int8:ch" in result.output and "int8_weight_only" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["modules"]["0"]["scheme"] == "int8:ch"
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "quanta.json" in result.output
