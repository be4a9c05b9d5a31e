"""HQQ: data-free, a valid QTensor of the rule's scheme, and lower weight and output error than RTN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.errors import UnsupportedError
from quanta.methods.hqq import hqq_tensor
from quanta.nn.base import QuantModule
from quanta.scheme import QScheme
from quanta.tensor import QTensor
from tests.methods.conftest import needs_data, weight_layers

# The bound on HQQ / RTN squared error, by scheme: measured about 0.94-0.95 (asym, int4), 0.82-0.87 (asym, int3),
# 0.87-0.94 (fmin, int4) and 0.80-0.93 (fmin, int3) on Student-t, Laplace and LeNet-5 weights, g64.
BOUNDS = {
    "int4:g64:asym:sf16": 0.97,
    "int3:g64:asym:sf16": 0.92,
    "int4:g64:fmin:sf16": 0.96,
    "int3:g64:fmin:sf16": 0.95,
}


def _heavy_tailed() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(256, 512, generator=generator)
    chi2 = torch.randn(3, 256, 512, generator=generator).pow(2).sum(0) / 3
    uniform = torch.rand(256, 512, generator=generator).clamp(1e-7, 1 - 1e-7)
    return {
        "student_t3": 0.02 * normal / chi2.sqrt(),  # Student-t with 3 degrees of freedom
        "laplace": -0.02 * torch.sign(uniform - 0.5) * torch.log1p(-2 * (uniform - 0.5).abs()),
    }


def _errors(w: torch.Tensor, qt: QTensor, x: torch.Tensor) -> tuple[float, float]:
    """(squared weight error, mean squared layer-output error on the inputs ``x`` (batch, K))."""
    delta = (qt.dequantize() - w).reshape(w.shape[0], -1)
    return float(delta.pow(2).sum()), float((x @ delta.T).pow(2).mean())


def _ratios(weights: dict[str, torch.Tensor], scheme: str) -> tuple[float, float]:
    """HQQ's total weight and layer-output errors over RTN's."""
    totals = torch.zeros(2, 2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    for w in weights.values():
        x = torch.randn(256, w[0].numel(), generator=generator)
        totals[0] += torch.tensor(_errors(w, quantize_tensor(w, scheme), x), dtype=torch.float64)
        totals[1] += torch.tensor(_errors(w, hqq_tensor(w, scheme), x), dtype=torch.float64)
    ratio = totals[1] / totals[0]
    return float(ratio[0]), float(ratio[1])


@pytest.mark.parametrize("scheme", sorted(BOUNDS))
@pytest.mark.parametrize("kind", ["student_t3", "laplace"])
def test_hqq_beats_rtn_on_heavy_tailed_weights(scheme: str, kind: str) -> None:
    weight_ratio, output_ratio = _ratios({kind: _heavy_tailed()[kind]}, scheme)
    assert weight_ratio <= BOUNDS[scheme]
    assert output_ratio <= BOUNDS[scheme]


@needs_data
@pytest.mark.parametrize("scheme", sorted(BOUNDS))
def test_hqq_beats_rtn_on_lenet5(lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]], scheme: str) -> None:
    model = lenet[0]
    weights = {n: model.get_submodule(n).weight.detach() for n in weight_layers(model)}  # type: ignore[union-attr]
    weight_ratio, output_ratio = _ratios(weights, scheme)
    assert weight_ratio <= BOUNDS[scheme]
    assert output_ratio <= BOUNDS[scheme]


@pytest.mark.parametrize("scheme", [*sorted(BOUNDS), "int2:g16:asym", "uint8:ch:asym", "int4:tensor:fmin", "int5:g24"])
def test_hqq_gives_a_valid_qtensor_of_the_scheme(scheme: str) -> None:
    w = _heavy_tailed()["student_t3"][:64, :200]  # 200 columns: a ragged last group for g64 and g24
    if scheme == "int5:g24":
        with pytest.warns(UserWarning, match="symmetric"):
            qt = hqq_tensor(w, scheme)
        assert torch.equal(qt.codes, quantize_tensor(w, scheme).codes)
    else:
        qt = hqq_tensor(w, scheme)
    rtn = quantize_tensor(w, scheme)
    assert str(qt.scheme) == str(rtn.scheme) and qt.codes.dtype == rtn.codes.dtype
    assert qt.codes.shape == rtn.codes.shape and qt.nbytes == rtn.nbytes
    for name, value in rtn.params.items():
        assert qt.params[name].shape == value.shape and qt.params[name].dtype == value.dtype
    assert qt.scheme.fmt.check_params(qt.params, qt.scheme) is None
    qmin, qmax = qt.scheme.fmt.qrange(qt.scheme)  # type: ignore[attr-defined]
    codes = qt.unpacked_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    # The codes are the encoder's for the stored parameters: encoding the result again gives the same codes.
    fmt = qt.scheme.fmt
    again = qt.grouping.map(lambda xb, pb: fmt.encode(xb, pb, qt.scheme, None), w.reshape(64, -1), qt.params)
    assert torch.equal(again.to(torch.int32), codes)
    back = QTensor.from_dict(qt.to_dict("w."), "w.")
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.dequantize(), qt.dequantize())


def test_hqq_is_deterministic() -> None:
    w = _heavy_tailed()["laplace"]
    first, again = hqq_tensor(w, "int3:g64:asym:sf16"), hqq_tensor(w, "int3:g64:asym:sf16")
    assert torch.equal(first.codes, again.codes)
    for name, value in first.params.items():
        assert torch.equal(again.params[name], value)


def test_hqq_refuses_non_integer_grids_and_stochastic_rounding() -> None:
    w = torch.randn(8, 64)
    with pytest.raises(UnsupportedError, match="integer"):
        hqq_tensor(w, "nf4:g32")
    with pytest.raises(UnsupportedError, match="stochastic"):
        hqq_tensor(w, "int4:g32:asym:sr")


def test_quantize_with_the_hqq_preset_needs_no_data_and_saves_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(16, 128)
    expected = model(x).detach()
    weight = model[0].weight.detach().clone()
    qmodel = quanta.quantize(model, "w4a16-g64-hqq")  # no calib
    layer = qmodel[0]
    assert isinstance(layer, QuantModule)
    scheme = QScheme.parse("int4:g64:asym:sf16")
    reference = hqq_tensor(weight, scheme)
    assert torch.equal(layer.qweight.dequantize(), reference.dequantize())
    out = qmodel(x).detach()
    assert float((out - expected).pow(2).mean()) < float(expected.pow(2).mean()) * 0.01
    quanta.save(qmodel, tmp_path / "m")
    loaded = quanta.load(tmp_path / "m", nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)))
    assert torch.equal(loaded(x), out)
