"""Static (calibrated) and dynamic activation quantization inside quanta.quantize."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.calib import inputs
from quanta.errors import QuantaError

torch_ao = pytest.importorskip("torch.ao.quantization")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _calib(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(8, 16, generator=g) for _ in range(n)]


def test_w8a8_matches_an_independent_torch_reference() -> None:
    model = _mlp()
    float_model = _mlp()
    # Reference: torch's MinMaxObserver on each layer's float input over the calibration data.
    observers = [
        torch_ao.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127)
        for _ in range(2)
    ]
    with torch.no_grad():
        for x in _calib():
            observers[0](x)
            observers[1](torch.relu(float_model[0](x)))
    quanta.quantize(model, "w8a8", calib=_calib())
    assert model[0].act_scheme is not None and not model[0].act_dynamic
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))
    h = x
    for layer, obs in zip((model[0], model[2]), observers, strict=True):
        scale, zero = obs.calculate_qparams()
        assert float(layer.act_scale) == pytest.approx(float(scale), rel=1e-6) and int(layer.act_zero) == int(zero)
        h = torch.fake_quantize_per_tensor_affine(h, float(scale), int(zero), -128, 127)
        h = F.linear(h, layer.dequantized_weight(torch.float32), layer.bias)
        if layer is model[0]:
            h = torch.relu(h)
    torch.testing.assert_close(model(x), h, rtol=0, atol=1e-5)


def test_dynamic_per_token_needs_no_calibration() -> None:
    model = quanta.quantize(_mlp(), "w8a8-dyn")
    x = torch.randn(3, 16)
    x[0, 0], x[1, 3] = -6.0, 6.0  # one token led by its negative extreme, one by its positive one
    layer = model[0]
    # Symmetric per token over the full range [-128, 127], the extreme value exact: the scale that fits both ends.
    scale = torch.maximum(-x.amin(-1, keepdim=True) / 128, x.amax(-1, keepdim=True) / 127)
    xq = torch.clamp(torch.round(x / scale), -128, 127) * scale
    expected = F.linear(xq, layer.dequantized_weight(torch.float32), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_calibration_errors_and_label_stripping() -> None:
    with pytest.raises(QuantaError, match="empty"):
        quanta.quantize(_mlp(), "w8a8", calib=[])
    labelled = [(x, torch.zeros(8, dtype=torch.long)) for x in _calib()]
    model = _mlp()
    with pytest.raises(QuantaError, match=r"quanta\.calib\.inputs"):
        quanta.quantize(model, "w8a8", calib=labelled)
    assert isinstance(model[0], nn.Linear)  # nothing changed
    quanta.quantize(model, "w8a8", calib=inputs(labelled))
    assert model[0].act_scheme is not None


def test_kl_observer_is_selectable_and_saved(tmp_path: Path) -> None:
    recipe = quanta.Recipe(
        rules=(
            quanta.Rule(
                weight=quanta.QScheme.parse("int8:ch"), activation=quanta.QScheme.parse("uint8:tensor:asym:obs=kl")
            ),
        )
    )
    model = quanta.quantize(_mlp(), recipe, calib=_calib())
    x = torch.randn(4, 16)
    path = quanta.save(model, tmp_path / "a")
    loaded = quanta.load(path, _mlp())
    assert torch.equal(loaded(x), model(x))
    assert str(loaded[0].act_scheme) == "uint8:tensor:asym:obs=kl"
    dyn = quanta.quantize(_mlp(), "w8a8-dyn")
    assert torch.equal(quanta.load(quanta.save(dyn, tmp_path / "d"), _mlp())(x), dyn(x))


def test_dynamic_convolution_inputs_get_one_scale_per_sample() -> None:
    torch.manual_seed(0)
    model = quanta.quantize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), "w8a8-dyn")
    conv = model[0]
    x = torch.randn(2, 3, 6, 6)
    x[1] *= 10  # a loud sample must not coarsen the quiet one's grid
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    scale = torch.maximum(-lo / 128, hi / 127)
    xq = torch.clamp(torch.round(x / scale), -128, 127) * scale
    expected = F.conv2d(xq, conv.dequantized_weight(torch.float32), conv.bias)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # batch-independent: the quiet sample alone gives the same grid (up to conv rounding)
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-5, atol=1e-6)
    assert "per sample" in repr(conv)
