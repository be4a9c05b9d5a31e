"""W8A8 linear on fbgemm's packed weight: the same integers as the reference path, one copy of the codes."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.kernels.w8a8_fbgemm import _available, packed_nbytes
from tests.kernels.bounds import BF16_UNIT, FP32_UNIT

pytestmark = pytest.mark.skipif(not _available(), reason="no fbgemm, or no VNNI (saturates)")

IN, OUT = 512, 96  # fbgemm pads nothing for these on any x86 instruction set


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(16, IN, generator=g).relu() + 0.1 for _ in range(3)]  # positive: zero point far from 0


def _float(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, OUT))


def _model(preset: str, seed: int = 0) -> nn.Sequential:
    return quanta.quantize(_float(seed), preset, calib=_calib() if preset == "w8a8" else None)


def _exact(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 product of the reference path's fake-quantized input and dequantized weight, and ``|xq| @ |W|^T``."""
    xq = layer.quantize_input(x.float()).double()
    w = layer.qweight.dequantize().double()
    return F.linear(xq, w, layer.bias.double()), xq.abs() @ w.abs().t()


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
def test_chosen_where_packing_pads_little_else_int_mm(preset: str) -> None:
    assert _model(preset)[0].kernel == "w8a8_fbgemm"
    torch.manual_seed(0)
    padded = nn.Sequential(nn.Linear(64, 40))  # in_features 64 would be padded to a 256/512-row block: 4-8x
    assert packed_nbytes(torch.Size([40, 64])) > 4 * 40 * 64
    calib = [torch.randn(8, 64)] if preset == "w8a8" else None
    assert quanta.quantize(padded, preset, calib=calib)[0].kernel == "w8a8_int_mm"


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dyn"])
@pytest.mark.parametrize("shape", [(1, IN), (9, IN), (2, 3, IN)])
def test_fp32_kernel_matches_the_reference_path(
    preset: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _model(preset)[0]
    if preset == "w8a8":
        assert int(layer.act_zero) != 0  # fbgemm's zero-point correction is exercised
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 2
    fast = layer(x)
    exact, spread = _exact(layer, x)
    # Same integer codes on both paths; fp32 roundings of the sum (held as fp32 by fbgemm) and of the scalings.
    bound = (x.shape[-1] + 3) * FP32_UNIT * (spread + exact.abs())
    assert fast.dtype == torch.float32 and fast.shape == (*shape[:-1], OUT)
    assert bool(((fast.double() - exact).abs() <= bound).all())
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    assert bool(((layer(x).double() - exact).abs() <= bound).all())


def test_ties_round_half_to_even_like_the_reference() -> None:
    # Inputs that land exactly on k + 0.5 steps: fbgemm must round them as the reference path does (to even).
    layer = _model("w8a8")[0]
    layer.act_scale.fill_(2.0**-6)  # a power of two: x * (1 / s) is exact, so the ties survive the scaling
    scale, zero = float(layer.act_scale), int(layer.act_zero)
    halves = (torch.arange(-40, 40, dtype=torch.float32) + 0.5).repeat(IN // 80 + 1)[:IN]
    x = (halves * scale).reshape(1, IN)
    assert torch.equal(x * (1.0 / scale), halves.reshape(1, IN))  # really ties after the reference's scaling
    codes = torch.clamp(torch.round(halves) + zero, -128, 127)
    w = layer.qweight.unpacked_codes().double()  # (N, K) int8 codes
    acc = (codes - zero).double() @ w.t()
    want = acc * scale * layer.weight_scale.double().reshape(1, -1) + layer.bias.double()
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-6, atol=1e-5)


def test_bf16_inputs_are_served_and_rounded_once() -> None:
    layer = _model("w8a8-dyn")[0]
    x = torch.randn(5, IN).to(torch.bfloat16)
    fast = layer(x)
    exact, spread = _exact(layer, x)
    bound = BF16_UNIT * exact.abs() + (IN + 3) * FP32_UNIT * spread
    assert fast.dtype == torch.bfloat16
    assert bool(((fast.double() - exact).abs() <= bound).all())


def test_one_copy_counted_and_canonical_codes_saved(tmp_path: Path) -> None:
    float_model = _float()
    independent = quantize_tensor(float_model[0].weight.detach(), "int8:ch")
    model = quanta.quantize(copy.deepcopy(float_model), "w8a8", calib=_calib())
    layer = model[0]
    assert "weight_codes" not in dict(layer.named_buffers())  # fbgemm's packed weight is the only copy
    assert torch.equal(layer.qweight.codes, independent.codes)
    assert torch.equal(model.state_dict()["0.weight_codes"], independent.codes)
    act_bytes = 4 + 4
    expected = packed_nbytes(torch.Size([OUT, IN])) + independent.params["scale"].numel() * 4 + OUT * 4 + act_bytes
    assert quanta.model_nbytes(model) == expected
    assert quanta.model_nbytes(model) <= 1.02 * (independent.nbytes + OUT * 4 + act_bytes)
    x = torch.randn(4, IN)
    loaded = quanta.load(quanta.save(model, tmp_path / "m"), nn.Sequential(nn.Linear(IN, OUT)))
    assert loaded[0].kernel == "w8a8_fbgemm"
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))


def test_load_state_dict_repacks_and_reports_bad_codes() -> None:
    a, b = _model("w8a8-dyn"), _model("w8a8-dyn", seed=7)
    x = torch.randn(3, IN)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.weight_codes"):
        b.load_state_dict({**a.state_dict(), "0.weight_codes": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(RuntimeError, match="Missing key"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "0.weight_codes"})


def test_moving_off_the_cpu_puts_the_codes_back_in_their_buffer() -> None:
    model = _model("w8a8")
    state, x = model.state_dict(), torch.randn(2, IN)
    y = model(x)
    moved = copy.deepcopy(model).to("meta")  # fbgemm's packed weight cannot follow
    assert moved[0].kernel == "reference" and moved[0].weight_codes.is_meta
    assert moved[0].weight_codes.shape == state["0.weight_codes"].shape
    moved.load_state_dict(state, assign=True)  # back on the CPU, as quanta.load fills a meta skeleton
    assert moved[0].kernel == "w8a8_fbgemm" and "weight_codes" not in dict(moved[0].named_buffers())
    assert torch.equal(moved(x), y)


def test_pickles_carry_the_canonical_codes() -> None:
    import io

    model = _model("w8a8")
    x = torch.randn(2, IN)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded[0].kernel == "w8a8_fbgemm" and torch.equal(loaded(x), model(x))
    assert torch.equal(model[0].__getstate__()["_buffers"]["weight_codes"], model.state_dict()["0.weight_codes"])
