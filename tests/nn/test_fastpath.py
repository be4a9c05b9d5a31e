"""Quantized transformer encoders run in eval mode with torch's fused fast path enabled (the default)."""

from pathlib import Path

import torch
from torch import nn

import quanta


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _module_by_module(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def test_quantized_encoder_takes_each_packed_module_s_forward(tmp_path: Path) -> None:
    x = torch.randn(2, 5, 32)
    model = quanta.quantize(_encoder(), "w8a8-dyn")
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        y = model(x)  # the fused path would fail on packed weights, or skip the activation quantization
    assert torch.equal(y, _module_by_module(model, x))
    float_y = _module_by_module(_encoder(), x)
    assert quanta.metrics.sqnr_db(float_y, y) > 25
    loaded = quanta.load(quanta.save(model, tmp_path / "enc"), _encoder())
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_float_encoders_keep_the_fast_path() -> None:
    model = _encoder()
    quanta.quantize(model, quanta.Recipe(rules=(quanta.Rule(skip=True),)))
    assert all(layer.activation_relu_or_gelu for layer in model.layers)
