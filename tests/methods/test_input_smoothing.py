"""smoothinput: SmoothQuant's scales kept by a linear layer that no norm feeds, applied to its input at run time."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import InvalidTensorError, UnsupportedError
from quanta.eval.layer_error import layer_errors
from quanta.methods.input_smoothing import factors_of, smooth_inputs
from quanta.methods.smoothquant import smoothquant_scales

SCALES = torch.tensor([100.0, 1.0, 0.01, 3.0])  # raw features of very different ranges (sensor-like)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].weight /= SCALES  # every feature matters as much to the output, whatever its range
    return model.eval()


def _inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) * SCALES


def test_the_float_function_is_kept_and_the_factors_are_smoothquants_closed_form() -> None:
    model, x = _model(), _inputs(256, 1)
    original_weight = model[0].weight.detach().clone()
    with torch.no_grad():
        before = model(x)
    smooth_inputs(model, {"0": model[0]}, list(x.split(64)))
    s = smoothquant_scales(x.abs().amax(dim=0), original_weight.abs().amax(dim=0))
    factors = factors_of(model[0])
    assert factors is not None
    torch.testing.assert_close(factors, 1 / s)
    torch.testing.assert_close(model[0].weight, original_weight * s)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_w8a8_error_falls_where_one_input_range_cannot_cover_every_feature(tmp_path: Path) -> None:
    model, calib, x = _model(), list(_inputs(512, 2).split(128)), _inputs(1024, 3)
    with torch.no_grad():
        ref = model(x)

        def error(q: nn.Module) -> float:
            return float((q(x) - ref).pow(2).mean() / ref.pow(2).mean())

        plain = quanta.quantize(copy.deepcopy(model), "w8a8", calib=calib)
        smoothed = quanta.quantize(copy.deepcopy(model), "w8a8-smoothinput", calib=calib)
        assert smoothed[0].input_smoothing is not None and "smoothed" in repr(smoothed[0])
        assert error(smoothed) < 0.1 * error(plain)  # the 0.01-range feature is no longer rounded away
        # the weight's own error is measured against what was quantized, W diag(s), not against W
        first = layer_errors(model, smoothed, calib)[0]
        assert first.weight_sqnr_db is not None and first.weight_sqnr_db > 40
        quanta.save(smoothed, tmp_path / "m")
        loaded = quanta.load(tmp_path / "m", _model())
        assert torch.equal(loaded(x), smoothed(x))


def test_factors_must_fit_the_layer() -> None:
    packed = quanta.quantize(_model(), "w8a16")
    with pytest.raises(InvalidTensorError, match="4 finite factors"):
        packed[0].set_input_smoothing(torch.ones(3))
    with pytest.raises(InvalidTensorError, match="finite"):
        packed[0].set_input_smoothing(torch.tensor([1.0, float("nan"), 1.0, 1.0]))


def test_tied_weights_and_conv1d_layers_are_refused_before_anything_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight  # tied: scaling one layer's columns would change the other
    before = model[0].weight.detach().clone()
    with pytest.raises(UnsupportedError, match="tied"):
        quanta.quantize(model, "w8a8-smoothinput", calib=[_inputs(64, 4)])
    assert torch.equal(model[0].weight, before)
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    gpt2_style = nn.Sequential(pytorch_utils.Conv1D(8, 4))
    with pytest.raises(UnsupportedError, match="Conv1D"):
        quanta.quantize(gpt2_style, "w8a8-smoothinput", calib=[_inputs(64, 4)])
