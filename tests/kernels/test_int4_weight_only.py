"""Grouped int4 weight-only linear through torch's int4-packed CPU matmul, against the reference path."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.kernels.int4_weight_only import scales_and_zeros
from tests.kernels.bounds import bf16_bound, weight_terms


def _layer(preset: str = "w4a16-g32", out_f: int = 112, in_f: int = 128, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return quanta.quantize(nn.Sequential(nn.Linear(in_f, out_f, bias=bias)), preset)[0]


def _exact(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.qweight.dequantize().double(), bias)


@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_kernel_is_chosen_for_every_supported_group(group: int) -> None:
    assert _layer(f"w4a16-g{group}", in_f=512).kernel == "int4_weight_only"


@pytest.mark.parametrize(
    ("preset", "out_f", "in_f", "why"),
    [
        ("w4a16-g32", 56, 128, "out_features not a multiple of 16"),
        ("w4a16-g32", 64, 80, "ragged last group"),
        ("w4a16-g16", 64, 128, "group size torch does not support"),
        ("w3a16-g32", 64, 128, "3-bit codes"),
    ],
)
def test_shapes_the_kernel_cannot_serve_take_the_reference_path(preset: str, out_f: int, in_f: int, why: str) -> None:
    layer = _layer(preset, out_f, in_f)
    assert layer.kernel == "reference", why
    x = torch.randn(3, in_f).to(torch.bfloat16)
    expected = F.linear(x, layer.dequantized_weight(torch.bfloat16), layer.bias.to(torch.bfloat16))
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("scheme", ["int4:g64:asym:sf16", "int4:g64:sf16", "uint4:g64:asym", "int4:g128:asym:sbf16"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 256), (7, 256), (2, 3, 256)])
def test_kernel_matches_the_exact_product_within_bf16_rounding(
    scheme: str, bias: bool, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 112, bias=bias))  # 112 rows: one full and one partial torch block
    layer = quanta.quantize(model, quanta.Recipe(rules=(quanta.Rule(weight=quanta.QScheme.parse(scheme)),)))[0]
    assert layer.kernel == "int4_weight_only"
    x = torch.randn(*shape).to(torch.bfloat16)
    fast = layer(x)
    exact = _exact(layer, x)
    bound = bf16_bound(x, weight_terms(layer.qweight), exact)
    assert fast.dtype == torch.bfloat16 and fast.shape == (*shape[:-1], 112)
    assert bool(((fast.double() - exact).abs() <= bound).all())
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = layer(x)  # bf16 F.linear on the dequantized weight: the same bound holds
    assert bool(((reference.double() - exact).abs() <= bound).all())


def test_scales_and_zeros_reproduce_the_dequantized_weight() -> None:
    # torch's decoding (u - 8) * scale + zero, with our table and codes, gives our weight (fp32 table: exact).
    layer = _layer("w4a16-g32", 32, 64)
    table = scales_and_zeros(layer, torch.float32)  # (K / g, N, 2)
    u = layer.qweight.unpacked_codes() + 8  # signed codes -> torch's unsigned nibbles
    scale = table[..., 0].t().repeat_interleave(32, dim=1)
    zero = table[..., 1].t().repeat_interleave(32, dim=1)
    torch.testing.assert_close((u - 8) * scale + zero, layer.dequantized_weight(torch.float32), rtol=1e-6, atol=1e-7)


def test_fp32_inputs_and_input_gradients_take_the_reference_path() -> None:
    layer = _layer()
    x = torch.randn(5, 128)
    assert torch.equal(layer(x), F.linear(x, layer.dequantized_weight(torch.float32), layer.bias))
    xb = torch.randn(2, 128, dtype=torch.bfloat16, requires_grad=True)
    layer(xb).sum().backward()
    assert xb.grad is not None and xb.grad.shape == xb.shape


def test_one_copy_of_the_codes_and_no_float_weight() -> None:
    layer = _layer("w4a16-g128", 4096 // 16, 1024)
    qt = layer.qweight
    buffers = dict(layer.named_buffers())
    assert sorted(buffers) == ["weight_codes", "weight_scale", "weight_zero"]
    assert quanta.model_nbytes(layer) == qt.nbytes + layer.bias.numel() * 4  # exactly the scheme's bytes + bias
    floats = sum(t.numel() for t in [*layer.parameters(), *layer.buffers()] if t.is_floating_point())
    assert floats == qt.params["scale"].numel() + layer.bias.numel()
    layer(torch.randn(1, 1024, dtype=torch.bfloat16))
    assert quanta.model_nbytes(layer) == qt.nbytes + layer.bias.numel() * 4  # nothing cached by a forward pass


def test_state_dict_and_files_hold_the_canonical_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    float_layer = nn.Linear(128, 112)
    independent = quantize_tensor(float_layer.weight.detach(), "int4:g32:asym:sf16")
    model = quanta.quantize(nn.Sequential(copy.deepcopy(float_layer)), "w4a16-g32")
    layer = model[0]
    assert layer.kernel == "int4_weight_only"
    assert not torch.equal(layer.weight_codes, independent.codes)  # held in torch's layout...
    assert torch.equal(model.state_dict()["0.weight_codes"], independent.codes)  # ...saved canonical
    assert torch.equal(layer.qweight.codes, independent.codes)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    loaded = quanta.load(quanta.save(model, tmp_path / "m"), nn.Sequential(nn.Linear(128, 112)))
    assert loaded[0].kernel == "int4_weight_only"
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded[0].weight_codes, layer.weight_codes)
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)


def test_load_state_dict_deepcopy_and_requantize() -> None:
    a, b = _layer(), _layer()
    torch.manual_seed(5)
    b = quanta.quantize(nn.Sequential(nn.Linear(128, 112)), "w4a16-g32")[0]
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    twin = copy.deepcopy(a)
    assert torch.equal(twin(x), a(x)) and twin.kernel == "int4_weight_only"
    with pytest.raises(RuntimeError, match="size mismatch"):
        a.load_state_dict({**a.state_dict(), "weight_codes": torch.zeros(3, dtype=torch.uint8)})


def test_moving_off_the_cpu_puts_the_canonical_codes_back() -> None:
    model = nn.Sequential(_layer())
    state, x = model.state_dict(), torch.randn(2, 128, dtype=torch.bfloat16)
    y = model(x)
    moved = copy.deepcopy(model).to("meta")
    assert moved[0].kernel == "reference" and moved[0].weight_codes.is_meta
    moved.load_state_dict(state, assign=True)
    assert moved[0].kernel == "int4_weight_only"
    assert torch.equal(moved[0].qweight.codes, state["0.weight_codes"])
    assert torch.equal(moved(x), y)


def test_pickles_carry_the_canonical_codes() -> None:
    import io

    model = nn.Sequential(_layer())
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # unpickling picks the kernel and converts again
    assert loaded[0].kernel == "int4_weight_only" and torch.equal(loaded(x), model(x))
    assert torch.equal(loaded[0].weight_codes, model[0].weight_codes)  # repacked into the same layout here
    assert torch.equal(model[0].__getstate__()["_buffers"]["weight_codes"], model.state_dict()["0.weight_codes"])
