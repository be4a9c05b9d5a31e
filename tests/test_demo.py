"""The demo end to end: a real trained model whose quantized weights must behave like the float ones."""

from pathlib import Path

import pytest

from quanta.demo import DEMO_SCHEMES, load_or_train, run_demo


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
