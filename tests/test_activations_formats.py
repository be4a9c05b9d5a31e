"""Static activations in non-integer formats (fp8 e4m3, fixed point, binary), checked against torch's own ops."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.errors import UnsupportedError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(8, 16, generator=g) for _ in range(4)]


def test_fp8_activations_match_torch_float8_cast() -> None:
    model = _mlp()
    quanta.quantize(model, "fp8", calib=_calib())
    layer = model[0]
    # Reference: the per-tensor scale maps the calibrated absmax to e4m3's largest value (448); inputs are cast to
    # torch's float8_e4m3fn and back (round to nearest even, saturated to the calibrated range).
    amax = max(float(x.abs().max()) for x in _calib())
    scale = float(layer.act_scale.reshape(()))
    assert scale == pytest.approx(amax / 448.0, rel=1e-6)
    x = torch.randn(5, 16) * 1.5
    ref_x = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
    expected = F.linear(ref_x, layer.dequantized_weight(torch.float32), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def test_fixed_point_activations_need_no_calibration_and_round_to_sixteenths() -> None:
    model = _mlp()
    quanta.quantize(model, "q4.4")  # a fixed grid: no calibration data is needed
    layer = model[0]
    x = torch.randn(5, 16) * 4
    ref_x = (torch.round(x * 16) / 16).clamp(-8, 127 / 16)
    expected = F.linear(ref_x, layer.dequantized_weight(torch.float32), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def _inner_inputs(preset: quanta.Recipe | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantized input values of the second of 4 linears under ``preset``, and its float calibration inputs."""
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(4)])
    calib = _calib()
    quanta.quantize(model, preset, calib=calib)  # first and last layers stay float
    inner = model[1]
    seen: list[torch.Tensor] = []
    inner.register_forward_hook(lambda m, args, out: seen.append(m.quantize_input(args[0])))
    with torch.no_grad():
        model(calib[0])
        hidden = model[0](torch.cat(calib))
    return torch.unique(seen[0]), hidden


def test_sign_activations_take_two_values_scaled_by_the_mean_magnitude() -> None:
    sign = quanta.Recipe(
        rules=(quanta.Rule(weight=quanta.QScheme.parse("binary:ch"), activation=quanta.QScheme.parse("binary")),),
        keep_first_last=True,
    )
    values, hidden = _inner_inputs(sign)
    assert values.numel() == 2 and float(values[0]) == pytest.approx(-float(values[1]))
    # The scale is the mean |x| of the calibration inputs of that layer (a 99.99% clip changes it little).
    assert float(values[1]) == pytest.approx(float(hidden.abs().mean()), rel=0.02)


def test_bnn_activations_take_the_two_lloyd_levels_of_the_calibration_inputs() -> None:
    values, hidden = _inner_inputs("bnn")
    upper = hidden >= hidden.mean()
    assert values.numel() == 2
    assert float(values[0]) == pytest.approx(float(hidden[~upper].mean()), rel=0.03)
    assert float(values[1]) == pytest.approx(float(hidden[upper].mean()), rel=0.03)


def test_fp8_activations_survive_save_load_and_bf16(tmp_path: Path) -> None:
    model = quanta.quantize(_mlp(), "fp8", calib=_calib())
    x = torch.randn(3, 16)
    path = quanta.save(model, tmp_path / "fp8")
    loaded = quanta.load(path, _mlp())
    assert torch.equal(loaded(x), model(x))
    scale = model[0].act_scale.clone()
    model.to(torch.bfloat16)
    assert model[0].act_scale.dtype == scale.dtype and torch.equal(model[0].act_scale, scale)


def test_dynamic_non_integer_activations_are_refused() -> None:
    fp8 = quanta.QScheme.parse("fp8_e4m3")
    recipe = quanta.Recipe(rules=(quanta.Rule(weight=fp8, activation=fp8, dynamic=True),))
    model = _mlp()
    with pytest.raises(UnsupportedError, match="dynamic activations are integer only"):
        quanta.quantize(model, recipe)
    assert isinstance(model[0], nn.Linear)
