"""The demo end to end: a real trained model whose quantized weights must behave like the float ones."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.demo import DEMO_SCHEMES, load_or_train, run_demo
from quanta.errors import QuantaError


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model, _, _ = load_or_train(tmp_path_factory.mktemp("cache"))
    return run_demo(model)


def test_float_model_learns_digits(results: tuple) -> None:
    baseline, _ = results
    assert baseline.accuracy > 0.95


def test_eight_bit_formats_keep_accuracy_and_are_four_times_smaller(results: tuple) -> None:
    baseline, rows = results
    by_scheme = {r.scheme: r for r in rows}
    for scheme in ("int8:ch", "uint8:tensor:asym", "fp8_e4m3:ch", "q1.7"):
        row = by_scheme[scheme]
        assert abs(row.accuracy - baseline.accuracy) <= 0.01, scheme
        assert 3.9 < baseline.nbytes / row.nbytes <= 4.0, scheme
        assert row.sqnr_db > 25, scheme


def test_fewer_bits_cost_error(results: tuple) -> None:
    _, rows = results
    by_scheme = {r.scheme: r for r in rows}
    assert [r.scheme for r in rows] == list(DEMO_SCHEMES)
    assert by_scheme["int8:ch"].sqnr_db > by_scheme["int4:ch"].sqnr_db > by_scheme["binary:ch"].sqnr_db
    assert by_scheme["int4:g32:sf16"].sqnr_db > by_scheme["int4:ch"].sqnr_db  # smaller groups, less error
    # 6 dB per bit, roughly: int8 vs int4 per channel differ by about 24 dB.
    assert 18 < by_scheme["int8:ch"].sqnr_db - by_scheme["int4:ch"].sqnr_db < 30


def test_corrupt_cache_is_retrained(tmp_path: Path) -> None:
    path = tmp_path / "digits_cnn-v1.safetensors"
    path.write_bytes(b"garbage")
    _, got, trained = load_or_train(tmp_path, epochs=1)
    assert got == path and trained


def test_whole_model_presets_keep_accuracy_and_shrink_the_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    from quanta.demo import run_presets

    model, _, _ = load_or_train(tmp_path_factory.mktemp("cache2"))
    base, rows = run_presets(model, ("w8a16", "w8a8", "w4a16-g32"))
    for row in rows:
        assert abs(row.accuracy - base.accuracy) <= 0.02, row
        assert row.nbytes < base.nbytes / 3, row


def test_presets_whose_method_is_missing_are_skipped_with_the_reason() -> None:
    from quanta.eval.presets import compare_presets

    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    base, rows = compare_presets(lambda: copy.deepcopy(net), ["w8a16", "w4a16-g32-nosuchmethod"], [x], (x, y), rounds=1)
    assert base.accuracy == quanta.eval.accuracy(net, (x, y)) and base.nbytes == quanta.model_nbytes(net)
    done, skipped = rows
    assert done.skipped is None and done.nbytes < base.nbytes and done.speedup > 0
    assert skipped.skipped is not None and "nosuchmethod" in skipped.skipped


def test_plot_is_a_png_written_atomically(tmp_path: Path) -> None:
    from quanta.eval.plot import plot_accuracy_vs_bytes

    path = plot_accuracy_vs_bytes(
        {"m": [("float", 1000, 0.9), ("w8a16", 250, 0.9), ("binary", 40, 0.5)]}, tmp_path / "p.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left behind
    with pytest.raises(QuantaError, match="no results"):
        plot_accuracy_vs_bytes({"m": []}, tmp_path / "q.png")


def test_data_dir_must_hold_the_real_models(tmp_path: Path) -> None:
    from quanta.demo import find_data_dir

    with pytest.raises(QuantaError, match="lenet5_mnist"):
        find_data_dir(tmp_path)
