"""Whatever kernel quanta picks on this CPU, full-range int8 products come out exact (no int16 saturation)."""

import pytest
import torch
from torch import nn

import quanta


def _saturating_model(preset: str) -> tuple[nn.Module, torch.Tensor]:
    # Weights of +-1 in alternating-sign pairs quantize to codes +-127; inputs at the calibrated extremes give
    # activation codes at the ends of the byte. Pairs of such products sum to 2 * 255 * 127 > 32767: a GEMM that
    # accumulates pairs in int16 (vpmaddubsw, CPUs without VNNI) clips them.
    torch.manual_seed(0)
    layer = nn.Linear(512, 96)  # no fbgemm padding at this shape on any x86 instruction set
    with torch.no_grad():
        layer.weight.copy_(torch.sign(torch.randn(96, 512)))
    calib = [torch.rand(32, 512) * 4 - 2]
    x = torch.where(torch.rand(8, 512) > 0.5, 2.0, -2.0)
    model = quanta.quantize(nn.Sequential(layer), preset, calib=calib if preset == "w8a8" else None)
    return model, x


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
def test_chosen_linear_kernel_does_not_saturate(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _saturating_model(preset)
    fast = model(x)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = model(x)
    assert model[0].kernel != "reference"  # a real int8 kernel served the first call
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-4 * float(reference.abs().max()))
