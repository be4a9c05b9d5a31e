"""The vector-codebook lookup kernel (``vq_lut``) against the reference path and the exact fp64 product."""

from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.kernels.base import kernel_for
from quanta.kernels.vq_lut import LUT_MAX_ROWS, VQ_LUT, dequantize_bytes, lut_linear
from quanta.scheme import QScheme
from quanta.tensor import QTensor
from tests.kernels.bounds import BF16_UNIT, FP32_UNIT

# Every codebook size the byte tables serve (stage indices of 1, 2, 4 and 8 bits), one and two stages; 4x256r2
# has a byte per stage index, alternating stages: the decoder's two byte classes.
FORMATS = ["vq2x16", "vq4x256", "vq8x256", "vq2x4", "vq4x16r2", "vq4x256r2", "vq2x16r2"]


@cache  # a k-means fit per layer: each is built once and only read (forward passes) by the tests
def _layer(fmt: str, out_f: int = 40, in_f: int = 96, bias: bool = True, granularity: str = "tensor") -> nn.Module:
    torch.manual_seed(0)
    scheme = QScheme(fmt, granularity, scale_dtype="fp16")
    model = nn.Sequential(nn.Linear(in_f, out_f, bias=bias))
    return quanta.quantize(model, quanta.Recipe(rules=(quanta.Rule(weight=scheme),)))[0]


def _stage_magnitudes(qt: QTensor) -> torch.Tensor:
    """``sum_s |W_s|`` fp64 ``(N, K)``: each stage decoded alone (the other codebook zeroed) by the format."""
    total = torch.zeros(qt.shape, dtype=torch.float64)
    for name in qt.params:
        alone = {n: p if n == name else torch.zeros_like(p) for n, p in qt.params.items()}
        total += QTensor(qt.codes, alone, qt.scheme, qt.shape, qt.dtype, qt.axis).dequantize().double().abs()
    return total


def _fp32_bound(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Error bound of the fp32 lookups. Every output is a sum of the products ``x_i * c_s[i]`` (one per input value
    and stage) through at most ``m`` fp32 roundings: the product, ``d - 1`` additions in the inner product, at most
    7 combining a byte's indices, ``K * bits / 8`` summing the bytes, 1 adding the bias. So
    ``|y - exact| <= gamma_m * (|x| @ sum_s |W_s|^T + |b|)``, ``gamma_m = m u / (1 - m u)``, ``u = 2**-24``."""
    fmt = layer.weight_scheme.fmt
    m = fmt.dim + 7 + layer.in_features * fmt.bits // 8 + 1
    gamma = m * FP32_UNIT / (1 - m * FP32_UNIT)
    bias = 0.0 if layer.bias is None else layer.bias.double().abs()
    return gamma * (x.double().abs() @ _stage_magnitudes(layer.qweight).t() + bias)


def _exact(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.qweight.dequantize().double(), bias)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_kernel_is_chosen_for_byte_aligned_vq_weights(fmt: str) -> None:
    layer = _layer(fmt)
    assert layer.kernel == "vq_lut"
    assert kernel_for("linear", layer.weight_scheme, layer.weight_shape) is VQ_LUT
    assert not any(name.startswith("kernel_") for name, _ in layer.named_buffers())  # nothing held but the codes


@pytest.mark.parametrize(
    ("fmt", "out_f", "in_f", "granularity", "why"),
    [
        ("vq2x64", 40, 96, "tensor", "6-bit indices straddle bytes"),
        ("vq2x16", 40, 98, "tensor", "a row of 98 2-bit codes does not end on a byte"),
        ("vq4x256", 40, 96, "channel", "one codebook per row"),
    ],
)
def test_weights_the_kernel_cannot_serve_take_the_reference_path(
    fmt: str, out_f: int, in_f: int, granularity: str, why: str
) -> None:
    layer = _layer(fmt, out_f, in_f, granularity=granularity)
    assert layer.kernel == "reference", why
    x = torch.randn(2, in_f)
    assert torch.equal(layer(x), F.linear(x, layer.dequantized_weight(torch.float32), layer.bias))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("out_f", "in_f", "bias"), [(40, 96, True), (37, 24, False), (3, 128, True)])
@pytest.mark.parametrize("shape", [(1,), (LUT_MAX_ROWS,), (2, 1)])
def test_lookups_match_the_exact_product_within_fp32_rounding(
    fmt: str, out_f: int, in_f: int, bias: bool, shape: tuple[int, ...]
) -> None:
    layer = _layer(fmt, out_f, in_f, bias)
    torch.manual_seed(1)
    x = torch.randn(*shape, in_f)
    y = layer(x)  # at most LUT_MAX_ROWS rows: the lookup path
    assert y.shape == (*shape, out_f) and y.dtype == torch.float32
    exact = _exact(layer, x)
    assert bool(((y.double() - exact).abs() <= _fp32_bound(layer, x)).all())


@pytest.mark.parametrize("fmt", ["vq4x256", "vq4x16r2"])
def test_bf16_inputs_round_the_fp32_lookups_once(fmt: str) -> None:
    layer = _layer(fmt)
    x = torch.randn(3, 96).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    exact = _exact(layer, x)
    err = _fp32_bound(layer, x)
    assert bool(((y.double() - exact).abs() <= err + BF16_UNIT * (exact.abs() + err)).all())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("out_f", "in_f"), [(40, 96), (37, 24)])
def test_byte_table_dequantization_equals_the_format_decoder(fmt: str, out_f: int, in_f: int) -> None:
    layer = _layer(fmt, out_f, in_f)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_bytes(layer, dtype), layer.dequantized_weight(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batches_above_the_lookup_limit_equal_the_reference_path(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer("vq4x256r2")
    x = torch.randn(LUT_MAX_ROWS + 1, 96).to(dtype)
    fast = layer(x)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    assert torch.equal(fast, layer(x))


def test_lookups_serve_any_batch_when_called_directly() -> None:
    layer = _layer("vq2x16", bias=False)
    x = torch.randn(3 * LUT_MAX_ROWS, 96)
    assert bool(((lut_linear(x, layer).double() - _exact(layer, x)).abs() <= _fp32_bound(layer, x)).all())


def test_fp16_inputs_and_gradients_take_the_reference_path() -> None:
    layer = _layer("vq4x256")
    x16 = torch.randn(1, 96).to(torch.float16)
    assert torch.equal(layer(x16), F.linear(x16, layer.dequantized_weight(torch.float16), layer.bias.half()))
    x = torch.randn(1, 96, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, layer.dequantized_weight(torch.float32).sum(0).expand(1, -1))


def test_save_and_load_keep_the_canonical_codes_and_the_kernel(tmp_path: Path) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24))

    torch.manual_seed(0)
    model = quanta.quantize(net(), "vq4x16r2")
    codes = [m.qweight.codes.clone() for m in (model[0], model[2])]
    x = torch.randn(1, 64)
    before = model(x)
    quanta.save(model, tmp_path / "m")
    config = (tmp_path / "m" / "quanta.json").read_text()
    assert config.count('"kernel": "vq_lut"') == 2
    loaded = quanta.load(tmp_path / "m", net())
    assert [loaded[0].kernel, loaded[2].kernel] == ["vq_lut", "vq_lut"]
    for module, original in zip((loaded[0], loaded[2]), codes, strict=True):
        assert torch.equal(module.state_dict()["weight_codes"], original)
    assert torch.equal(loaded(x), before)


def test_codebooks_shared_across_layers_are_served() -> None:
    torch.manual_seed(0)
    model = quanta.quantize(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)), "vq4x256s")
    x = torch.randn(1, 64)
    for layer in (model[0], model[2]):
        assert layer.kernel == "vq_lut"
        assert bool(((layer(x).double() - _exact(layer, x)).abs() <= _fp32_bound(layer, x)).all())
