"""W8A8 linear through torch._int_mm: the same integers as the reference path, scales applied after."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from tests.kernels.bounds import BF16_UNIT, FP32_UNIT


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(16, 64, generator=g).relu() + 0.1 for _ in range(3)]  # positive: zero point far from 0


def _model(preset: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32, bias=False))
    return quanta.quantize(model, preset, calib=_calib() if preset == "w8a8" else None)


def _exact(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 product of the reference path's fake-quantized input and dequantized weight, and ``|xq| @ |W|^T``."""
    xq = layer.quantize_input(x.float()).double()
    w = layer.qweight.dequantize().double()
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(xq, w, bias), xq.abs() @ w.abs().t()


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
def test_kernel_is_chosen_for_int8_activations_only(preset: str) -> None:
    model = _model(preset)
    assert model[0].kernel == model[2].kernel == "w8a8_int_mm"
    assert _model("w8a16")[0].kernel == "int8_weight_only"
    uint8_input = quanta.Recipe(
        rules=(
            quanta.Rule(weight=quanta.QScheme.parse("int8:ch"), activation=quanta.QScheme.parse("uint8:tensor:asym")),
        )
    )
    torch.manual_seed(0)
    other = quanta.quantize(nn.Sequential(nn.Linear(64, 48)), uint8_input, calib=_calib())
    assert other[0].kernel == "int8_weight_only"  # unsigned codes: the fake-quantized input goes weight-only


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
@pytest.mark.parametrize("shape", [(1, 64), (9, 64), (2, 3, 64)])
def test_fp32_kernel_matches_the_reference_path(
    preset: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _model(preset)[0]
    if preset == "w8a8":
        assert int(layer.act_zero) != 0  # the zero-point correction is exercised
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 2
    fast = layer(x)
    exact, spread = _exact(layer, x)
    # Same integer codes on both paths; the only difference is fp32 rounding of the scaled sums (K terms).
    bound = (x.shape[-1] + 2) * FP32_UNIT * (spread + exact.abs())
    assert fast.dtype == torch.float32 and fast.shape == (*shape[:-1], 48)
    assert bool(((fast.double() - exact).abs() <= bound).all())
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    assert bool(((layer(x).double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
def test_bf16_inputs_are_served_and_rounded_once(preset: str) -> None:
    layer = _model(preset)[0]
    x = torch.randn(5, 64).to(torch.bfloat16)
    fast = layer(x)
    exact, spread = _exact(layer, x)  # the kernel quantizes the bf16 input exactly as the reference does
    bound = BF16_UNIT * exact.abs() + (x.shape[-1] + 2) * FP32_UNIT * spread
    assert fast.dtype == torch.bfloat16
    assert bool(((fast.double() - exact).abs() <= bound).all())


def test_codes_equal_the_reference_fake_quantization() -> None:
    # An independent check of the integers: torch's quantize_per_tensor with the module's scale and zero point.
    layer = _model("w8a8")[0]
    x = torch.randn(6, 64)
    q = torch.quantize_per_tensor(x, float(layer.act_scale), int(layer.act_zero), torch.qint8).int_repr().int()
    w = layer.weight_codes.view(torch.int8).view(48, 64).int()
    acc = (q - int(layer.act_zero)) @ w.t()
    expected = acc.double() * float(layer.act_scale) * layer.weight_scale.double().reshape(1, -1) + layer.bias.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_row_sums_are_counted_not_saved_and_follow_loaded_codes(tmp_path: Path) -> None:
    model = _model("w8a8")
    layer = model[0]
    qt = layer.qweight
    act_bytes = 4 + 4  # act_scale fp32 + act_zero int32
    assert quanta.model_nbytes(layer) == qt.nbytes + 48 * 4 + act_bytes + 48 * 4  # + int32 row sums (N,)
    assert "kernel_rowsum" not in model.state_dict() and "0.kernel_rowsum" not in model.state_dict()
    other = _model("w8a8", seed=7)
    x = torch.randn(4, 64)
    assert not torch.equal(other(x), model(x))
    other.load_state_dict(model.state_dict())
    assert torch.equal(other[0].kernel_rowsum, layer.kernel_rowsum)
    assert torch.equal(other(x), model(x))
    loaded = quanta.load(
        quanta.save(model, tmp_path / "m"), nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32, bias=False))
    )
    assert loaded[0].kernel == "w8a8_int_mm"
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))
