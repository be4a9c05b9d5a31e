"""Regressions from adversarial review: extreme magnitudes, odd inputs, damaged data."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import quanta
from quanta.demo import load_or_train
from quanta.errors import CorruptDataError, InvalidTensorError, QuantaError, SchemeError, UnknownFormatError
from quanta.io import save_tensors
from quanta.primitives import stochastic_round


@pytest.mark.parametrize("scheme", ["int8", "fp8_e4m3", "uint4:tensor:fmin:narrow", "nf4", "int4:g2:asym"])
def test_tiny_magnitudes_give_finite_codes(scheme: str) -> None:
    x = torch.tensor([1e-37, 5e-38, 0.0, -2e-38])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qt = quanta.quantize_tensor(x, scheme)
        fake = quanta.fake_quantize(x, scheme)
    out = qt.dequantize()
    assert torch.isfinite(out).all() and torch.equal(fake, out)
    assert (out - x).abs().max() <= 1e-37
    s = quanta.QScheme.parse(scheme)
    assert torch.isin(qt.unpacked_codes(), s.fmt.code_values(s)).all()


@pytest.mark.parametrize(
    ("scheme", "big"), [("int4:tensor:fmin:sf16", 2e5), ("lloyd2:tensor:sf16", 2e5), ("int8:tensor:sf16", 1e10)]
)
def test_parameters_beyond_fp16_warn_and_stay_finite(scheme: str, big: float) -> None:
    x = torch.tensor([big / 2, -big, 3.0, 7.0])  # an offset, codebook entry or step beyond fp16's 65504
    with pytest.warns(UserWarning, match="sf32 or sbf16"):
        qt = quanta.quantize_tensor(x, scheme)
    assert torch.isfinite(qt.dequantize()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(quanta.fake_quantize(x, scheme), qt.dequantize())


def test_fp16_outputs_saturate_instead_of_overflowing() -> None:
    for x, scheme in (
        (torch.tensor([-65504.0, 42688.0]).half(), "int2"),
        (torch.tensor([65504.0, -1.0]).half(), "int8:tensor:sbf16"),
    ):
        assert torch.isfinite(quanta.quantize_tensor(x, scheme).dequantize()).all()
        assert torch.isfinite(quanta.fake_quantize(x, scheme)).all()


def test_float64_beyond_float32_is_rejected() -> None:
    with pytest.raises(InvalidTensorError, match="float32 range"):
        quanta.quantize_tensor(torch.tensor([1e300, 1.0], dtype=torch.float64), "int8")


def test_importance_weights_must_be_non_negative() -> None:
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidTensorError, match="negative"):
        quanta.quantize_tensor(x, "lloyd2:ch", weight=-torch.ones_like(x))
    w = torch.ones_like(x)
    w[1] = 0.0  # a row with no importance at all is fitted as if unweighted
    weighted = quanta.quantize_tensor(x, "lloyd2:ch", weight=w).dequantize()
    assert torch.equal(weighted[1], quanta.quantize_tensor(x, "lloyd2:ch").dequantize()[1])


def test_stochastic_rounding_has_no_bias_at_large_magnitudes() -> None:
    x = torch.full((2_000_000,), 32000.3)
    r = stochastic_round(x, torch.Generator().manual_seed(0))
    assert abs(float((r - 32000.0).mean()) - 0.3) < 0.002  # standard error 0.0003


def test_numpy_integers_and_strict_flags() -> None:
    assert quanta.QScheme("int4", "group", np.int64(32)) == quanta.QScheme.parse("int4:g32")  # type: ignore[arg-type]
    x = torch.randn(4, 6)
    assert quanta.quantize_tensor(x, "int8:ch", axis=np.int64(1)).axis == 1  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="True or False"):
        quanta.QScheme("int8", narrow="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["int" + "9" * 5000, "int\u0663", "lloyd\u0663"])
def test_odd_format_names_are_unknown(text: str) -> None:
    with pytest.raises(UnknownFormatError):
        quanta.QScheme.parse(text)


def test_bad_arguments_raise_quanta_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidTensorError):
        quanta.fake_quantize([1.0, 2.0], "int8")  # type: ignore[arg-type]
    with pytest.raises(InvalidTensorError, match="tensors"):
        save_tensors(tmp_path / "a.safetensors", {"x": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(QuantaError, match="directory"):
        save_tensors(tmp_path, {"x": torch.zeros(1)})
    with pytest.raises(InvalidTensorError, match="meta"):
        quanta.quantize_tensor(torch.empty(4, 4, device="meta"), "int8")
    with pytest.raises(CorruptDataError, match="dict"):
        quanta.QTensor.from_dict(None)  # type: ignore[arg-type]


def test_damaged_parameters_and_versions_are_refused() -> None:
    import json

    qt = quanta.quantize_tensor(torch.randn(4, 32), "int4:g16:asym")
    flat = qt.to_dict()
    flat["scale"] = flat["scale"].clone()
    flat["scale"][0, 0] = float("nan")
    with pytest.raises(CorruptDataError, match="NaN"):
        quanta.QTensor.from_dict(flat)
    for version in (0, "1", 1.5, True):
        flat = qt.to_dict()
        meta = {"format_version": version, "scheme": str(qt.scheme), "shape": [4, 32], "dtype": "float32", "axis": None}
        flat["qmeta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
        with pytest.raises(CorruptDataError, match="format_version"):
            quanta.QTensor.from_dict(flat)


def test_demo_runs_when_the_cache_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _, _, trained = load_or_train(blocker / "cache", epochs=1)
    assert trained


@pytest.mark.parametrize(
    ("scheme", "name", "bad", "words"),
    [
        ("int4:g16:asym", "zero", 100, "zero points"),
        ("int4:g16", "scale", -1.0, "positive"),
        ("nf4:g16", "scale", 0.0, "positive"),
        ("lloyd2:ch", "codebook", None, "sorted"),
    ],
)
def test_out_of_range_parameters_are_refused(scheme: str, name: str, bad: float | None, words: str) -> None:
    flat = quanta.quantize_tensor(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), scheme).to_dict()
    value = flat[name].clone()
    if bad is None:
        value = value.flip(-1)  # a codebook in descending order
    else:
        value.view(-1)[0] = bad
    flat[name] = value
    with pytest.raises(CorruptDataError, match=words):
        quanta.QTensor.from_dict(flat)
