"""Grouped int4 weight-only linear through torch's int4-packed CPU matmul, against the reference path."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.kernels.int4_weight_only import (
    TABLE_BUDGET,
    _params_from_layout,
    _params_to_layout,
    holds_table,
    scales_and_zeros,
)
from quanta.scheme import QScheme
from tests.kernels.bounds import bf16_bound, int4_table_terms, reference_terms

TABLE = "weight_scales_and_zeros"
# Per-call table (fp16 scales, g32) and held table (bf16 scales, g128): every life-cycle test runs on both.
LIFECYCLE = [("w4a16-g32", 128), ("w4a16-g128", 256)]


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


SCHEMES = [
    "int4:g64:asym:sf16",
    "int4:g64:sf16",
    "uint4:g64:asym",
    "int4:g128:asym:sbf16",
    "uint4:g128:asym:sbf16",
    "int4:g256:sbf16",
    "int4:g128:sbf16",
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 512), (7, 512), (2, 3, 512)])
def test_kernel_matches_the_exact_product_within_bf16_rounding(
    scheme: str, bias: bool, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 112, bias=bias))  # 112 rows: one full and one partial torch block
    layer = quanta.quantize(model, quanta.Recipe(rules=(quanta.Rule(weight=QScheme.parse(scheme)),)))[0]
    assert layer.kernel == "int4_weight_only"
    assert (TABLE in dict(layer.named_buffers())) == holds_table(layer.weight_scheme)
    x = torch.randn(*shape).to(torch.bfloat16)
    fast = layer(x)
    exact = _exact(layer, x)
    qt = layer.qweight
    assert fast.dtype == torch.bfloat16 and fast.shape == (*shape[:-1], 112)
    # bf16 scales: only the zero column is rounded, so this bound is much tighter than the reference path's.
    kernel_bound = bf16_bound(x, int4_table_terms(qt), qt, exact, layer.bias)
    assert bool(((fast.double() - exact).abs() <= kernel_bound).all())
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = layer(x)  # bf16 F.linear on the dequantized weight: every weight is rounded
    assert bool(((reference.double() - exact).abs() <= bf16_bound(x, reference_terms(qt), qt, exact, layer.bias)).all())


@pytest.mark.parametrize(
    ("scheme", "held"),
    [
        ("int4:g128:asym:sbf16", True),  # 4 bytes a group for 3: +1 / 67 = 1.5%
        ("uint4:g256:asym:sbf16", True),  # +1 / 131
        ("int4:g256:sbf16", True),  # 4 bytes for 2: +2 / 130 = 1.5%
        ("int4:g128:sbf16", False),  # +2 / 66 = 3.0%: over the budget
        ("int4:g64:asym:sbf16", False),  # +1 / 35 = 2.9%
        ("int4:g128:asym:sf16", False),  # fp16 scales do not survive the cast to bf16
        ("int4:g128:asym", False),
    ],
)
def test_the_table_is_held_where_it_is_exact_and_within_the_memory_budget(scheme: str, held: bool) -> None:
    parsed = QScheme.parse(scheme)
    assert holds_table(parsed) == held
    layer = quanta.quantize(nn.Sequential(nn.Linear(512, 64)), quanta.Recipe(rules=(quanta.Rule(weight=parsed),)))[0]
    assert (TABLE in dict(layer.named_buffers())) == held
    extra = quanta.model_nbytes(layer) - layer.bias.numel() * 4 - layer.qweight.nbytes
    assert extra == (layer.qweight.params["scale"].numel() * (4 - 3 if "asym" in scheme else 4 - 2) if held else 0)
    assert extra <= TABLE_BUDGET * layer.qweight.nbytes


def _all_bf16_scales(limit: float) -> torch.Tensor:
    """Every normal bf16 number of either sign with ``|s| <= limit``, as bf16 ``(M,)``."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    mag = bits.float().abs()
    return bits[(mag >= torch.finfo(torch.bfloat16).tiny) & (mag <= limit)]


@pytest.mark.parametrize("scheme", ["int4:g128:asym:sbf16", "uint4:g128:asym:sbf16"])
def test_zero_points_come_back_exactly_from_the_table_for_every_scale(scheme: str) -> None:
    # Exhaustive: every in-range zero point (|c - z| <= 8) with every normal bf16 scale whose 8 * |s| is finite.
    parsed = QScheme.parse(scheme)
    qmin, qmax = parsed.fmt.qrange(parsed)
    zero_dtype = parsed.fmt.param_spec(parsed)["zero"][1]
    scales = _all_bf16_scales(torch.finfo(torch.bfloat16).max / 8)
    assert scales.numel() > 64000  # both signs, exponents -126..124
    z = torch.arange(qmin, qmax + 1).to(zero_dtype)  # (16,)
    params = {"scale": scales[:, None].expand(-1, 16).contiguous(), "zero": z[None, :].expand(scales.numel(), -1)}
    params["zero"] = params["zero"].contiguous()
    shape = torch.Size([scales.numel(), 16 * 128])
    held = _params_to_layout(params, shape, parsed)
    assert held is not None  # the round trip was exact for every value (checked again independently below)
    back = _params_from_layout(held, shape, parsed)
    assert back["zero"].dtype == zero_dtype and torch.equal(back["zero"], params["zero"])
    assert back["scale"].dtype == torch.bfloat16 and torch.equal(back["scale"], params["scale"])


@pytest.mark.parametrize("bad", [0.0, float(torch.finfo(torch.bfloat16).max), float("inf")])
def test_scales_the_table_cannot_invert_keep_the_canonical_buffers(bad: float) -> None:
    # A zero scale loses the zero point; a huge one overflows the zero column: the module keeps its buffers,
    # rebuilds the table per call, and still saves what it loaded.
    layer = _layer("w4a16-g128", 64, 256)
    state = layer.state_dict()
    state["weight_scale"] = state["weight_scale"].clone()
    state["weight_scale"][3, 1] = bad
    state["weight_zero"] = state["weight_zero"].clone()
    state["weight_zero"][3, 1] = 5  # (c - z) * s = -5 * s: overflows for the largest scale
    layer.load_state_dict(state)
    assert TABLE not in dict(layer.named_buffers()) and layer.kernel == "int4_weight_only"
    assert all(torch.equal(v, state[k]) for k, v in layer.state_dict().items())
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    table = scales_and_zeros(layer, torch.bfloat16)
    packed = layer.weight_codes.view(64, 128)
    expected = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 128, table) + layer.bias.to(torch.bfloat16)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0, equal_nan=True)  # inf scales give NaN
    layer.load_state_dict(_layer("w4a16-g128", 64, 256).state_dict())  # ordinary scales: the table is held again
    assert TABLE in dict(layer.named_buffers()) and "weight_scale" not in dict(layer.named_buffers())


def test_the_held_table_is_the_table_the_per_call_path_builds() -> None:
    layer = _layer("w4a16-g128", 112, 512)
    held = dict(layer.named_buffers())[TABLE]
    params = layer.qweight.params  # canonical, converted back from the table
    rebuilt = torch.stack([params["scale"].float().t(), (-params["zero"] * params["scale"].float()).t()], dim=-1)
    assert held.dtype == torch.bfloat16 and held.shape == (4, 112, 2)
    assert torch.equal(held, rebuilt.to(torch.bfloat16))


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
    layer = _layer("w4a16-g64", 4096 // 16, 1024)  # fp16 scales: the table is built per call
    qt = layer.qweight
    buffers = dict(layer.named_buffers())
    assert sorted(buffers) == ["weight_codes", "weight_scale", "weight_zero"]
    assert quanta.model_nbytes(layer) == qt.nbytes + layer.bias.numel() * 4  # exactly the scheme's bytes + bias
    floats = sum(t.numel() for t in [*layer.parameters(), *layer.buffers()] if t.is_floating_point())
    assert floats == qt.params["scale"].numel() + layer.bias.numel()
    layer(torch.randn(1, 1024, dtype=torch.bfloat16))
    assert quanta.model_nbytes(layer) == qt.nbytes + layer.bias.numel() * 4  # nothing cached by a forward pass


def test_one_copy_of_the_parameters_when_the_table_is_held() -> None:
    layer = _layer("w4a16-g128", 4096 // 16, 1024)  # bf16 scales: torch's table replaces scale and zero
    qt = layer.qweight
    groups = qt.params["scale"].numel()
    assert sorted(dict(layer.named_buffers())) == ["weight_codes", TABLE]
    assert "weight_scale" in layer.state_dict() and TABLE not in layer.state_dict()
    # 4 bytes a group instead of a bf16 scale and an int8 zero point: one more byte a group.
    assert quanta.model_nbytes(layer) == qt.nbytes + groups + layer.bias.numel() * 4
    layer(torch.randn(1, 1024, dtype=torch.bfloat16))
    assert quanta.model_nbytes(layer) == qt.nbytes + groups + layer.bias.numel() * 4
    cast = copy.deepcopy(layer).to(torch.float16)  # .to(dtype) casts the bias, never the stored parameters
    assert dict(cast.named_buffers())[TABLE].dtype == torch.bfloat16
    assert torch.equal(cast.qweight.params["zero"], qt.params["zero"])


@pytest.mark.parametrize(("preset", "in_f"), LIFECYCLE)
def test_state_dict_and_files_hold_the_canonical_codes(preset: str, in_f: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    float_layer = nn.Linear(in_f, 112)
    model = quanta.quantize(nn.Sequential(copy.deepcopy(float_layer)), preset)
    layer = model[0]
    independent = quantize_tensor(float_layer.weight.detach(), layer.weight_scheme)
    assert layer.kernel == "int4_weight_only"
    assert not torch.equal(layer.weight_codes, independent.codes)  # held in torch's layout...
    state = model.state_dict()
    assert list(state) == ["0.bias", "0.weight_codes", "0.weight_scale", "0.weight_zero"]  # ...saved canonical
    assert torch.equal(state["0.weight_codes"], independent.codes)
    for name, value in independent.params.items():
        assert state[f"0.weight_{name}"].dtype == value.dtype and torch.equal(state[f"0.weight_{name}"], value)
        assert torch.equal(layer.qweight.params[name], value)
    assert torch.equal(layer.qweight.codes, independent.codes)
    x = torch.randn(3, in_f, dtype=torch.bfloat16)
    loaded = quanta.load(quanta.save(model, tmp_path / "m"), nn.Sequential(nn.Linear(in_f, 112)))
    assert loaded[0].kernel == "int4_weight_only"
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded[0].weight_codes, layer.weight_codes)
    assert sorted(dict(loaded[0].named_buffers())) == sorted(dict(layer.named_buffers()))
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())  # bit-identical reload
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)


@pytest.mark.parametrize(("preset", "in_f"), LIFECYCLE)
def test_load_state_dict_deepcopy_and_requantize(preset: str, in_f: int) -> None:
    a = _layer(preset, in_f=in_f)
    torch.manual_seed(5)
    b = quanta.quantize(nn.Sequential(nn.Linear(in_f, 112)), preset)[0]
    x = torch.randn(4, in_f, dtype=torch.bfloat16)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    assert sorted(dict(b.named_buffers())) == sorted(dict(a.named_buffers()))
    twin = copy.deepcopy(a)
    assert torch.equal(twin(x), a(x)) and twin.kernel == "int4_weight_only"
    assert sorted(dict(twin.named_buffers())) == sorted(dict(a.named_buffers()))
    with pytest.raises(RuntimeError, match="size mismatch"):
        a.load_state_dict({**a.state_dict(), "weight_codes": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(RuntimeError, match="size mismatch for weight_scale"):
        a.load_state_dict({**a.state_dict(), "weight_scale": torch.zeros(3, dtype=a.qweight.params["scale"].dtype)})
    assert torch.equal(a(x), b(x))  # a failed load leaves the module as it was


@pytest.mark.parametrize(("preset", "in_f"), LIFECYCLE)
def test_moving_off_the_cpu_puts_the_canonical_codes_back(preset: str, in_f: int) -> None:
    model = nn.Sequential(_layer(preset, in_f=in_f))
    state, x = model.state_dict(), torch.randn(2, in_f, dtype=torch.bfloat16)
    y = model(x)
    moved = copy.deepcopy(model).to("meta")
    assert moved[0].kernel == "reference" and moved[0].weight_codes.is_meta
    assert sorted(dict(moved[0].named_buffers())) == ["weight_codes", "weight_scale", "weight_zero"]
    moved.load_state_dict(state, assign=True)
    assert moved[0].kernel == "int4_weight_only"
    assert torch.equal(moved[0].qweight.codes, state["0.weight_codes"])
    assert torch.equal(moved(x), y)


@pytest.mark.parametrize(("preset", "in_f"), LIFECYCLE)
def test_pickles_carry_the_canonical_codes(preset: str, in_f: int) -> None:
    import io

    model = nn.Sequential(_layer(preset, in_f=in_f))
    x = torch.randn(2, in_f, dtype=torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # unpickling picks the kernel and converts again
    assert loaded[0].kernel == "int4_weight_only" and torch.equal(loaded(x), model(x))
    assert torch.equal(loaded[0].weight_codes, model[0].weight_codes)  # repacked into the same layout here
    assert torch.equal(model[0].__getstate__()["_buffers"]["weight_codes"], model.state_dict()["0.weight_codes"])
    state = model[0].__getstate__()
    for name in ("scale", "zero"):  # and the canonical parameters, not the table
        assert torch.equal(state["_buffers"][f"weight_{name}"], model.state_dict()[f"0.weight_{name}"])
    assert TABLE not in state["_buffers"] and TABLE not in state["_non_persistent_buffers_set"]
    assert sorted(dict(loaded[0].named_buffers())) == sorted(dict(model[0].named_buffers()))
