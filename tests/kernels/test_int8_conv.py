"""The int8 conv kernel against the reference path (fake-quantized input, dequantized weight, float conv) and
against the same convolution computed exactly in float64, with fp32 and bf16 inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.kernels.int8_conv import PackedConvWeight, int8_conv_available
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme

needs_kernel = pytest.mark.skipif(not int8_conv_available(), reason="no oneDNN int8 conv with VNNI on this CPU")
EPS = torch.finfo(torch.float32).eps
U = 2.0**-8  # bf16's unit roundoff: rounding to nearest moves a value by at most U times its magnitude
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# (in, out, kernel, stride, padding, dilation, groups, bias)
CONV2D_CASES = [
    (3, 16, 3, 1, 1, 1, 1, False),
    (16, 32, 3, 2, 1, 1, 1, True),
    (8, 8, 3, 1, 2, 2, 1, True),
    (16, 16, 3, 1, 2, 2, 1, True),  # 16 channels: the packed weight is held (packed once, without the geometry)
    (12, 24, (3, 5), (2, 1), (1, 2), 1, 3, True),
    (16, 16, 3, 1, 1, 1, 16, True),  # depthwise
    (6, 10, 1, 1, 0, 1, 1, True),
    (4, 8, 3, 1, "same", 1, 1, True),
    (4, 8, 3, 1, "valid", 1, 1, False),
]
CONV1D_CASES = [(8, 16, 5, 1, 2, 1, 1, True), (12, 12, 3, 2, 1, 2, 4, False), (5, 7, 3, 1, "same", 1, 1, True)]


def _quantized(conv: nn.Module, x_calib: torch.Tensor, recipe: str | Recipe = "w8a8") -> nn.Module:
    q = quanta.quantize(nn.Sequential(conv), recipe, calib=[x_calib])[0]
    return q


def _inputs(conv: nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    spatial = (9, 11) if isinstance(conv, nn.Conv2d) else (23,)
    # A shifted range (asymmetric zero point); the test batch reaches past it, so clamping is exercised.
    x_calib = torch.randn(4, conv.in_channels, *spatial) * 1.5 + 0.7
    x = torch.randn(3, conv.in_channels, *spatial) * 1.8 + 0.7
    return x_calib, x


def _exact(q: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantized conv computed in float64 from the fake-quantized input, and the same conv on magnitudes."""
    fn = F.conv2d if x.dim() == 4 else F.conv1d
    xq = q.quantize_input(x).double()
    w = q.dequantized_weight(torch.float64)
    b = None if q.bias is None else q.bias.double()
    y = fn(xq, w, b, q.stride, q.padding, q.dilation, q.groups)
    mag = fn(xq.abs(), w.abs(), None if b is None else b.abs(), q.stride, q.padding, q.dilation, q.groups)
    return y, mag


def _check(conv: nn.Module, seed: int, monkeypatch: pytest.MonkeyPatch, recipe: str | Recipe = "w8a8") -> None:
    x_calib, x = _inputs(conv, seed)
    q = _quantized(conv, x_calib, recipe)
    assert q.kernel == "int8_conv"
    with torch.no_grad():
        fast = q(x)
        monkeypatch.setenv("QUANTA_KERNEL", "reference")
        reference = q(x)
    exact, magnitude = _exact(q, x)
    assert fast.shape == reference.shape == exact.shape
    # The kernel accumulates int8 x int8 products exactly in int32 and scales once: a few roundings of fp32.
    assert ((fast.double() - exact).abs() <= 8 * EPS * magnitude + 1e-30).all()
    # The reference sums K fp32 products in some order: the classic bound is about K * eps * sum |x w|.
    k = q.weight_shape[1:].numel()
    assert ((fast.double() - reference.double()).abs() <= (k + 8) * EPS * magnitude + 1e-30).all()
    # One input code off by one would move an output by a whole step times a weight, far above these bounds.
    assert (8 * EPS * magnitude).max() < q.act_scale * q.dequantized_weight(torch.float32).abs().max()


@needs_kernel
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_kernel_matches_reference(case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    cin, cout, k, stride, padding, dilation, groups, bias = case
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    _check(conv, 2, monkeypatch)


@needs_kernel
@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_conv1d_kernel_matches_reference(case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    cin, cout, k, stride, padding, dilation, groups, bias = case
    torch.manual_seed(3)
    conv = nn.Conv1d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    _check(conv, 4, monkeypatch)


def _check_bf16(conv: nn.Module, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 in, bf16 out: the kernel's fp32 result rounded once to bf16, so it is pinned between the bf16
    roundings of the exact result minus and plus the fp32 kernel's own error bound."""
    x_calib, x = _inputs(conv, seed)
    q: Any = _quantized(conv, x_calib).to(torch.bfloat16)  # the cast keeps codes, scales and activation params
    assert q.kernel == "int8_conv" and q.act_scale.dtype == torch.float32
    xb = x.bfloat16()
    with torch.no_grad():
        fast = q(xb)
        monkeypatch.setenv("QUANTA_KERNEL", "reference")
        reference = q(xb)
        monkeypatch.delenv("QUANTA_KERNEL")
    assert fast.dtype == reference.dtype == torch.bfloat16 and fast.shape == reference.shape
    # The reference quantizes xb.float() (exact), so the codes are those of the fp32 input xb.float().
    exact, magnitude = _exact(q, xb.float())
    err = 8 * EPS * magnitude  # the fp32 kernel's bound (see _check); rounding to bf16 is monotonic
    lo, hi = (exact - err).float().bfloat16(), (exact + err).float().bfloat16()
    assert ((lo <= fast) & (fast <= hi)).all()
    # The bf16 reference rounds the input values and the weight to bf16 (2U) and sums K products in fp32.
    k = q.weight_shape[1:].numel()
    bound = 2 * U * exact.abs() + (3 * U + (k + 10) * EPS) * magnitude
    assert ((fast.double() - reference.double()).abs() <= bound).all()
    # A kernel off by one input code everywhere (a zero point off by one) would leave the pinned interval.
    shifted = torch.full_like(x, float(q.act_scale), dtype=torch.float64)
    fn = F.conv2d if x.dim() == 4 else F.conv1d
    w = q.dequantized_weight(torch.float64)
    wrong = (exact + fn(shifted, w, None, q.stride, q.padding, q.dilation, q.groups)).float().bfloat16()
    assert not ((lo <= wrong) & (wrong <= hi)).all()


@needs_kernel
@pytest.mark.parametrize("case", CONV2D_CASES, ids=str)
def test_conv2d_kernel_bf16_matches_exact_rounded(case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    cin, cout, k, stride, padding, dilation, groups, bias = case
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    _check_bf16(conv, 12, monkeypatch)


@needs_kernel
@pytest.mark.parametrize("case", CONV1D_CASES, ids=str)
def test_conv1d_kernel_bf16_matches_exact_rounded(case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    cin, cout, k, stride, padding, dilation, groups, bias = case
    torch.manual_seed(3)
    conv = nn.Conv1d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    _check_bf16(conv, 14, monkeypatch)


@needs_kernel
@pytest.mark.parametrize("act", ["uint8:tensor:asym", "int8:tensor"])
def test_other_8bit_input_grids(act: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    recipe = Recipe(rules=(Rule(weight=QScheme.parse("int8:ch"), activation=QScheme.parse(act)),))
    _check(nn.Conv2d(6, 12, 3, padding=1), 6, monkeypatch, recipe)


@needs_kernel
def test_kernel_is_chosen_statically() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(4, 8, 3), torch.randn(2, 4, 8, 8)
    assert _quantized(conv, x).kernel == "int8_conv"
    assert quanta.quantize(nn.Sequential(nn.Conv2d(4, 8, 3)), "w8a16")[0].kernel == "reference"  # float input
    assert quanta.quantize(nn.Sequential(nn.Conv2d(4, 8, 3)), "w8a8-dyn")[0].kernel == "reference"  # per token
    assert _quantized(nn.Conv2d(4, 8, 3), x, "w4a8").kernel == "reference"  # 4-bit weights
    uneven = nn.Conv2d(4, 8, 4, padding="same")  # "same" with an even kernel pads unevenly
    assert _quantized(uneven, x).kernel == "reference"


def test_cpus_without_vnni_take_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without VNNI, oneDNN multiplies u8 x s8 pairs into saturating int16: the static rule must refuse the kernel.
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    x_calib, x = _inputs(nn.Conv2d(4, 8, 3), 11)
    q = _quantized(nn.Conv2d(4, 8, 3), x_calib)
    assert q.kernel == "reference"
    expected = F.conv2d(q.quantize_input(x), q.dequantized_weight(torch.float32), q.bias)
    assert torch.equal(q(x), expected)


@needs_kernel
def test_other_inputs_take_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x_calib, x = _inputs(nn.Conv2d(4, 8, 3), 7)
    q: Any = _quantized(nn.Conv2d(4, 8, 3), x_calib)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = q(x)
    monkeypatch.delenv("QUANTA_KERNEL")
    # Inputs that need gradients go through the reference path (the kernel has no backward).
    xg = x.clone().requires_grad_(True)
    y = q(xg)
    assert torch.equal(y, reference)
    y.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # fp16 inputs are not what the kernel takes: the reference path, in fp16 (bf16 ones take the kernel).
    half = x.half()
    with torch.no_grad():
        expected = F.conv2d(q.quantize_input(half), q.dequantized_weight(torch.float16), q.bias.half())
        assert torch.equal(q(half), expected)


@needs_kernel
def test_channels_last_and_strided_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    x_calib, x = _inputs(nn.Conv2d(4, 8, 3), 8)
    q = _quantized(nn.Conv2d(4, 8, 3, padding=1), x_calib)
    plain = q(x)
    assert torch.equal(q(x.contiguous(memory_format=torch.channels_last)), plain)
    wide = torch.cat([x, x], dim=3)[..., ::2]  # a non-contiguous view
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = q(wide)
    monkeypatch.delenv("QUANTA_KERNEL")
    _, magnitude = _exact(q, wide)
    k = q.weight_shape[1:].numel()
    assert ((q(wide) - reference).abs() <= (k + 8) * EPS * magnitude).all()


def _two_convs() -> nn.Sequential:
    torch.manual_seed(9)
    # oneDNN's blocks depend on the CPU: AVX-512 VNNI pads input channels to 4, AMX pads output channels to 16.
    # 3 -> 12 pads on both (the codes stay); 12 -> 32 in 2 groups of 6 -> 16 packs without padding on AMX (held).
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 32, 3, stride=2, groups=2))


def _pads(conv: nn.Module) -> bool:
    """Whether oneDNN's packed layout of this (quantized) conv's weight is over 1% bigger than its codes here."""
    codes = conv.canonical_codes()
    return PackedConvWeight.from_codes(codes, conv.grouped_weight_shape).nbytes > 1.01 * codes.numel()


def _holds_packed(conv: nn.Module) -> bool:
    return isinstance(conv.kernel_weight, PackedConvWeight)


@needs_kernel
def test_packed_weight_is_the_only_copy_and_state_dict_keeps_canonical_codes() -> None:
    model, x = _two_convs(), torch.randn(2, 3, 12, 12)
    codes = [quantize_tensor(m.weight.detach(), QScheme.parse("int8:ch")).codes for m in (model[0], model[2])]
    quanta.quantize(model, "w8a8", calib=[x])
    first, second = model[0], model[2]
    assert _pads(first), "the test needs a first conv whose packed weight pads on this CPU"
    assert isinstance(first.kernel_weight, torch.Tensor) and first.weight_codes is first.kernel_weight
    if _pads(second):
        pytest.skip("oneDNN pads the second conv's weight on this CPU too: nothing here holds a packed weight")
    assert isinstance(second.kernel_weight, PackedConvWeight) and "weight_codes" not in dict(second.named_buffers())
    state = model.state_dict()
    assert torch.equal(state["0.weight_codes"], codes[0]) and torch.equal(state["2.weight_codes"], codes[1])
    # model_nbytes counts the packed weight (oneDNN's own size) in place of the codes: no second copy.
    stored = sum(t.numel() * t.element_size() for t in state.values())
    assert stored <= quanta.model_nbytes(model) <= stored + 0.01 * codes[1].numel()
    assert second.extra_nbytes() == codes[1].numel()
    # Copies pack again from the canonical codes and compute the same thing.
    y = model(x)
    assert torch.equal(copy.deepcopy(model)(x), y)
    fresh = quanta.quantize(_two_convs(), "w8a8", calib=[x])
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), y)


@needs_kernel
def test_moving_off_the_cpu_puts_the_codes_back_in_their_buffer() -> None:
    x = torch.randn(2, 3, 12, 12)
    model = quanta.quantize(_two_convs(), "w8a8", calib=[x])
    state, y = model.state_dict(), model(x)
    moved = copy.deepcopy(model).to("meta")  # any non-CPU device: the packed weight cannot follow
    assert moved[2].weight_codes.is_meta and moved[2].weight_codes.shape == state["2.weight_codes"].shape
    # Back on the CPU with the codes loaded into the buffer: the kernel packs per call and computes the same.
    moved.load_state_dict(state, assign=True)  # as quanta.load fills a meta skeleton
    assert moved[2].kernel == "int8_conv" and isinstance(moved[2].kernel_weight, torch.Tensor)
    assert torch.equal(moved(x), y)


@needs_kernel
def test_load_state_dict_refuses_codes_of_the_wrong_size() -> None:
    x = torch.randn(2, 3, 12, 12)
    model = quanta.quantize(_two_convs(), "w8a8", calib=[x])
    state = model.state_dict()
    state["2.weight_codes"] = state["2.weight_codes"][:-1]
    with pytest.raises(RuntimeError, match=r"size mismatch for 2\.weight_codes"):
        model.load_state_dict(state)


@needs_kernel
def test_save_load_bit_identical_with_the_kernel_recorded(tmp_path: Path) -> None:
    model, x = _two_convs(), torch.randn(2, 3, 12, 12)
    quanta.quantize(model, "w8a8", calib=[x])
    before = model(x)
    quanta.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "quanta.json").read_text())
    assert {entry["kernel"] for entry in config["modules"].values()} == {"int8_conv"}
    loaded = quanta.load(tmp_path / "m", _two_convs())
    assert [loaded[0].kernel, loaded[2].kernel] == ["int8_conv", "int8_conv"]
    assert [_holds_packed(m) for m in (loaded[0], loaded[2])] == [not _pads(m) for m in (loaded[0], loaded[2])]
    assert torch.equal(loaded(x), before)


@needs_kernel
@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")
def test_resnet20_w8a8_kernel_accuracy_equals_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from quanta.eval import accuracy
    from quanta.nn.conv import QuantConv2d
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    model = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th")
    quanta.quantize(model, "w8a8", calib=[data["x_train"][::4]])  # 100 images: enough to compare paths
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 19 and all(m.kernel == "int8_conv" for m in convs)
    test = (data["x_test"], data["y_test"])
    fast = accuracy(model, test)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = accuracy(model, test)
    assert abs(fast - reference) * len(data["y_test"]) <= 1.0 + 1e-9


@needs_kernel
@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")
def test_resnet20_w8a8_bf16_accuracy_within_one_image_of_fp32_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from quanta.eval import accuracy
    from quanta.methods import fold_batchnorm
    from quanta.nn.conv import QuantConv2d
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    model = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th").eval()
    fold_batchnorm(model, data["x_train"][:8])
    quanta.quantize(model, "w8a8", calib=[data["x_train"][::4]])
    test = (data["x_test"], data["y_test"])
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = accuracy(model, test)  # fp32, reference path
    monkeypatch.delenv("QUANTA_KERNEL")
    model.to(torch.bfloat16)
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 19 and all(m.kernel == "int8_conv" for m in convs)
    outputs: list[torch.dtype] = []
    for m in convs:
        m.register_forward_hook(lambda _m, _a, y: outputs.append(y.dtype))
    fast = accuracy(model, (data["x_test"].bfloat16(), data["y_test"]))
    assert outputs and set(outputs) == {torch.bfloat16}  # every conv ran in bf16 (the kernel: bf16 out)
    assert abs(fast - reference) * len(data["y_test"]) <= 1.0 + 1e-9


@needs_kernel
def test_quantized_model_pickles_with_its_kernel(tmp_path: Path) -> None:
    x_calib, x = _inputs(nn.Conv2d(4, 8, 3), 10)
    model = quanta.quantize(nn.Sequential(nn.Conv2d(4, 8, 3)), "w8a8", calib=[x_calib])
    torch.save(model, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    assert again[0].kernel == "int8_conv" and torch.equal(again(x), model(x))
    held = quanta.quantize(_two_convs(), "w8a8", calib=[torch.randn(2, 3, 12, 12)])
    torch.save(held, tmp_path / "h.pt")
    again = torch.load(tmp_path / "h.pt", weights_only=False)
    assert _holds_packed(again[2]) == _holds_packed(held[2]) == (not _pads(held[2]))  # chosen again on load
    assert torch.equal(again.state_dict()["2.weight_codes"], held.state_dict()["2.weight_codes"])


def test_unbatched_inputs_match_the_batched_result() -> None:
    torch.manual_seed(0)
    for conv, shape in ((torch.nn.Conv2d(3, 20, 3), (3, 10, 10)), (torch.nn.Conv1d(4, 8, 3), (4, 10))):
        calib = [torch.randn(4, *shape)]
        q = quanta.quantize(torch.nn.Sequential(conv).eval(), "w8a8", calib=calib)
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(q(x), q(x.unsqueeze(0))[0], rtol=1e-5, atol=1e-5)
