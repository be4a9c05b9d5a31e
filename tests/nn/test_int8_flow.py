"""int8 activations flowing between int8 convolutions (quanta.nn.int8_flow) against the plain kernel path and
against references built from float ops: folded ReLU / sum, codes on the reading conv's grid, the fallbacks."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.errors import QuantaError
from quanta.kernels.int8_conv import input_grid, int8_conv_available, quantize_input_codes
from quanta.nn import int8_flow
from quanta.nn.int8_flow import Int8Activation

pytestmark = pytest.mark.skipif(not int8_conv_available(), reason="no oneDNN int8 conv with VNNI on this CPU")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


class Block(nn.Module):
    """ResNet's basic block (functional ReLUs, option-A shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.pad = (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


class InPlaceBlock(Block):
    """The same block written as torchvision writes it: in-place ReLU modules and ``out += identity``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        identity = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        out += identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, block: type[Block] = Block) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layers = nn.Sequential(block(16, 16, 1), block(16, 32, 2), block(32, 32, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _data(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _quantized(model: nn.Module, calib: torch.Tensor | None = None) -> nn.Module:
    return quanta.quantize(model.eval(), "w8a8", calib=[_data(32, 7) if calib is None else calib])


def _plain(model: nn.Module) -> nn.Module:
    return int8_flow.enable(copy.deepcopy(model), on=False)


def test_quantize_enables_the_flow_and_outputs_are_plain_tensors() -> None:
    q = _quantized(Net())
    assert int8_flow.is_enabled(q)
    with torch.no_grad():
        y = q(_data())
    assert type(y) is torch.Tensor
    # Weight-only recipes have no int8 conv kernel: nothing to flow.
    assert not int8_flow.is_enabled(quanta.quantize(Net(), "w8a16"))


def test_codes_between_convs_are_the_reading_convs_quantization_of_the_float_value() -> None:
    q = _quantized(Net())
    x = _data()
    block = q.layers[0]
    seen: dict[str, Int8Activation] = {}
    block.conv2.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0]))
    with torch.no_grad():
        q(x)
        # The float value the plain path feeds conv2: relu(conv1(relu(stem(x)))), each conv on its kernel.
        plain = _plain(q)
        stem_out = F.relu(plain.stem(x))
        expected_float = F.relu(plain.layers[0].conv1(stem_out))
    got = seen["in"]
    assert isinstance(got, Int8Activation) and got.codes is not None  # conv2 read it as uint8 codes
    scale, zero = input_grid(block.conv2)
    assert (got.scale, got.zero) == (scale, zero)
    expected = quantize_input_codes(expected_float, scale, zero)
    diff = (got.codes.int() - expected.int()).abs()
    # oneDNN requantizes the int32 sums in one step, torch rounds the fp32 result: at most one code apart, and
    # only where the value falls within float rounding of a rounding boundary.
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


def test_the_residual_sum_adds_the_shortcut_on_its_8_bit_grid() -> None:
    q = _quantized(Net())
    x = _data()
    seen: dict[str, Int8Activation] = {}
    q.layers[1].conv1.register_forward_pre_hook(lambda _m, args: seen.__setitem__("block0_out", args[0]))
    with torch.no_grad():
        q(x)
        plain = _plain(q)
        block = plain.layers[0]
        shortcut = F.relu(plain.stem(x))  # the block's input: read by block.conv1 on its grid first
        s_scale, s_zero = input_grid(block.conv1)
        shortcut_q = (quantize_input_codes(shortcut, s_scale, s_zero).float() - s_zero) * s_scale
        out = block.conv2(F.relu(block.conv1(shortcut)))
        reference = F.relu(out.double() + shortcut_q.double())
    got = seen["block0_out"]
    assert got.codes is not None
    scale, zero = input_grid(q.layers[1].conv1)  # computed on the grid of the conv that read it
    got_values = (got.codes.double() - zero) * scale
    # Within one step of the reference (half a step of rounding, plus float rounding at the boundary) ...
    assert float((got_values - reference.clamp(max=(255 - zero) * scale)).abs().max()) <= scale * (1 + 1e-3)
    # ... and most codes exact.
    ref_codes = torch.clamp(torch.round(reference / scale) + zero, 0, 255)
    assert float((got.codes.double() != ref_codes).double().mean()) < 0.01


def test_flow_keeps_the_accuracy_of_the_plain_kernel_path() -> None:
    q = _quantized(Net())
    x = _data(64, 3)
    with torch.no_grad():
        flow, plain, reference = q(x), _plain(q)(x), None
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("QUANTA_KERNEL", "reference")
            reference = q(x)
    assert type(reference) is torch.Tensor
    # The shortcut's 8-bit grid is the only new rounding: far below the quantization error itself.
    err_flow = float((flow - reference).pow(2).mean() / reference.pow(2).mean())
    err_plain = float((plain - reference).pow(2).mean() / reference.pow(2).mean())
    assert err_flow < 1e-3 and err_plain < 1e-6
    assert float((flow.argmax(1) == reference.argmax(1)).float().mean()) >= 0.95


def test_in_place_relu_and_add_fold_like_the_functional_forms() -> None:
    functional, in_place = _quantized(Net(Block)), _quantized(Net(InPlaceBlock))
    x = _data()
    with torch.no_grad():
        assert torch.equal(functional(x), in_place(x))  # same weights (seeded), same folded ops
        # On the plain path the in-place forms compute the float model's values.
        torch.testing.assert_close(_plain(functional)(x), _plain(in_place)(x))


class Unfolded(nn.Module):
    """Ops quanta does not fold between two int8 convs: each is computed in float, as on the plain path."""

    def __init__(self, op: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.op == "sigmoid":
            y = torch.sigmoid(y)
        elif self.op == "mul_":
            y.mul_(0.5)  # in place on the conv's output
        elif self.op == "cat":
            y = torch.cat([y[:, :4], y[:, 4:]], dim=1)
        elif self.op == "relu_then_scale":
            y = F.relu(y) * 2.0
        z = self.b(y)
        return self.c(z + y)  # a float sum: y is float here


@pytest.mark.parametrize("op", ["sigmoid", "mul_", "cat", "relu_then_scale"])
def test_ops_that_are_not_folded_compute_in_float_exactly_as_the_plain_path(op: str) -> None:
    q = _quantized(Unfolded(op), torch.randn(8, 3, 12, 12))
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(q(x), _plain(q)(x))


def test_nested_outputs_submodule_calls_and_gradients_take_plain_tensors() -> None:
    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            y = F.relu(self.a(x))
            return {"feat": y, "out": [self.b(y)]}

    q = _quantized(TwoOut(), torch.randn(8, 3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        out = q(x)
        plain = _plain(q)(x)
        assert type(out["feat"]) is torch.Tensor and type(out["out"][0]) is torch.Tensor
        # conv b read "feat" first, as codes on its grid: the returned value is those codes, within half a step
        # (plus float rounding) of the plain path's float value; b's output itself is the plain path's.
        scale, _ = input_grid(q.b)
        assert float((out["feat"] - plain["feat"]).abs().max()) <= scale * (0.5 + 1e-3)
        torch.testing.assert_close(out["out"][0], plain["out"][0])
        assert type(q.a(x)) is torch.Tensor  # a submodule called on its own: no flow
    x.requires_grad_(True)
    q(x)["out"][0].sum().backward()  # inputs that need gradients take the reference path
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_reference_kernel_setting_and_exceptions_leave_no_flow_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    q = _quantized(Net())
    x = _data()
    seen: list[type] = []
    q.stem.register_forward_hook(lambda _m, _a, y: seen.append(type(y)))
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    with torch.no_grad():
        q(x)
    monkeypatch.delenv("QUANTA_KERNEL")
    assert seen == [torch.Tensor]
    with pytest.raises(RuntimeError):
        q(torch.randn(2, 5, 16, 16))  # wrong channel count: fails inside the call
    assert not int8_flow.active()  # the failed call left the flow state clean
    with torch.no_grad():
        q(x)
    assert seen[-1] is Int8Activation


def test_save_load_deepcopy_and_pickle_keep_the_flow(tmp_path: Path) -> None:
    q = _quantized(Net())
    x = _data()
    with torch.no_grad():
        before = q(x)
    quanta.save(q, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "quanta.json").read_text())["int8_flow"] is True
    loaded = quanta.load(tmp_path / "m", Net())
    for copy_ in (loaded, copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert int8_flow.is_enabled(copy_)
        with torch.no_grad():
            assert torch.equal(copy_(x), before)
    quanta.save(_plain(q), tmp_path / "off")
    assert not int8_flow.is_enabled(quanta.load(tmp_path / "off", Net()))


def test_bf16_activations_flow_in_bf16() -> None:
    q = _quantized(Net()).to(torch.bfloat16)
    x = _data().bfloat16()
    with torch.no_grad():
        y, plain = q(x), _plain(q)(x)
    assert y.dtype == torch.bfloat16 and type(y) is torch.Tensor
    assert float((y.float() - plain.float()).abs().max()) < 0.1 * float(plain.float().abs().max())


def test_an_activation_reads_like_a_float_tensor_in_hooks() -> None:
    q = _quantized(Net())
    x = _data()
    stats: list[float] = []
    q.layers[0].conv1.register_forward_hook(lambda _m, _a, y: stats.append(float(y.abs().max())))
    with torch.no_grad():
        q(x)
        _plain(q)(x)
    assert stats[0] == pytest.approx(stats[1], rel=1e-5)  # the hook computed it in float, as the plain path


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")
def test_resnet20_flow_accuracy_within_one_image_of_the_plain_path() -> None:
    from quanta.eval import accuracy
    from quanta.methods import fold_batchnorm
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    model = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th").eval()
    fold_batchnorm(model, data["x_train"][:8])
    quanta.quantize(model, "w8a8", calib=[data["x_train"][::4]])
    test = (data["x_test"], data["y_test"])
    assert int8_flow.is_enabled(model)
    flow, plain = accuracy(model, test), accuracy(_plain(model), test)
    assert abs(flow - plain) * len(data["y_test"]) <= 1.0 + 1e-9


def test_cached_kernel_constants_follow_changes_to_scales_and_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    q = _quantized(Net())
    x = _data()
    with torch.no_grad():
        before = q(x)
        conv = q.layers[0].conv2
        conv.weight_scale.mul_(2.0)  # in place: the cached fp32 scales must be rebuilt
        doubled = q(x)
        conv.bias = nn.Parameter(conv.bias.detach() + 1.0, requires_grad=False)  # a new tensor object
        shifted = q(x)
        monkeypatch.setenv("QUANTA_KERNEL", "reference")  # dequantized weights from the buffers, float convs
        expected = q(x)
    assert not torch.equal(before, doubled) and not torch.equal(doubled, shifted)
    torch.testing.assert_close(shifted, expected, rtol=0.05, atol=0.05)


class WithBatchNorm(nn.Module):
    """conv -> BatchNorm -> ReLU -> conv -> BatchNorm, + shortcut: BatchNorms left unfolded, one with a negative
    gamma (a negative factor on that channel's weight scale)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
            self.bn2.weight[3] = -0.8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(s)))))
        return self.head(F.relu(out + s))


def test_inference_batchnorm_folds_into_the_pending_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    q = _quantized(WithBatchNorm(), torch.randn(16, 3, 12, 12))
    x = torch.randn(4, 3, 12, 12)
    seen: list[object] = []
    q.bn2.register_forward_hook(lambda _m, _a, y: seen.append(y))
    with torch.no_grad():
        flow, plain = q(x), _plain(q)(x)
        monkeypatch.setenv("QUANTA_KERNEL", "reference")
        reference = q(x)
    assert isinstance(seen[0], Int8Activation) and seen[0].affine is not None  # folded into conv2, not run
    assert type(seen[1]) is torch.Tensor  # plain path: a float BatchNorm
    # Folding changes float rounding only. The shortcut on conv1's 8-bit grid moves the sum by at most half that
    # step, which can move head's input code by one of its steps: bounded through head's largest |weight| row sum.
    s1, _ = input_grid(q.conv1)
    s_head, _ = input_grid(q.head)
    head_gain = float(q.head.dequantized_weight(torch.float32).abs().sum(dim=(1, 2, 3)).max())
    assert float((flow - plain).abs().max()) <= head_gain * (0.5 * s1 + s_head) * 1.01 + 1e-4
    torch.testing.assert_close(plain, reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "pool",
    [(2, 2, 0, 1, False), (3, 3, 0, 1, False), ((2, 3), (2, 3), 0, 1, False), (3, 2, 1, 1, False), (2, 2, 0, 1, True)],
)
def test_max_pooling_of_codes_equals_float_max_pooling(pool: tuple[object, ...]) -> None:
    from quanta.nn.int8_flow import _max_pool_codes

    codes = torch.randint(0, 256, (3, 5, 11, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    codes = codes.contiguous(memory_format=torch.channels_last)
    expected = F.max_pool2d(codes.float(), *pool).to(torch.uint8)
    got = _max_pool_codes(codes, pool)
    assert torch.equal(got, expected) and got.is_contiguous(memory_format=torch.channels_last)


class Pooled(nn.Module):
    """LeNet's pattern (conv -> ReLU module -> MaxPool2d module -> conv), plus an overlapping pool."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.c1, self.relu, self.s2 = nn.Conv2d(3, 8, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.c3, self.s4 = nn.Conv2d(8, 8, 3), nn.MaxPool2d(3, stride=2, padding=1)
        self.c5 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c5(self.s4(F.relu(self.c3(self.s2(self.relu(self.c1(x)))))))


def test_max_pooling_folds_and_matches_the_plain_path() -> None:
    q = _quantized(Pooled(), torch.randn(16, 3, 20, 20))
    x = torch.randn(4, 3, 20, 20)
    seen: dict[str, object] = {}
    q.c3.register_forward_pre_hook(lambda _m, args: seen.setdefault("c3", args[0]))  # the first call: flow
    with torch.no_grad():
        flow, plain = q(x), _plain(q)(x)
    into_c3 = seen["c3"]
    assert isinstance(into_c3, Int8Activation) and into_c3.codes is not None and not into_c3.float_first
    # Pooling commutes with rounding to codes, so the flow differs from the plain path only where oneDNN's
    # requantization and torch's rounding of the fp32 result disagree (float rounding at a boundary): one code
    # of c5's input at most, through c5's largest |weight| row sum.
    s5, _ = input_grid(q.c5)
    gain = float(q.c5.dequantized_weight(torch.float32).abs().sum(dim=(1, 2, 3)).max())
    assert float((flow - plain).abs().max()) <= gain * s5 * 1.01 + 1e-5


class Three(nn.Module):
    """Three convs; ``case`` picks what the forward does between them (the review's reproductions)."""

    def __init__(self, case: str) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.c0, self.c1, self.c2 = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
        self.case = case

    def forward(self, x: torch.Tensor) -> object:
        a = self.c0(x)
        b = self.c1(a)  # a is uint8 codes from here on
        if self.case == "flatten":
            return torch.flatten(F.max_pool2d(self.c2(b), 2), 1)
        if self.case == "shortcut_relu_after_sum":
            out = self.c2(b) + a
            a.relu_()
            return out, a
        if self.case == "shortcut_mul_after_sum":
            out = self.c2(b) + a
            a.mul_(2)
            return out, a
        if self.case == "pool_view_sum":
            return self.c2(self.c2(b) + F.max_pool2d(a, 1)), a
        if self.case == "keywords":
            return torch.add(self.c2(b), other=a), torch.relu(input=a)
        raise AssertionError(self.case)


@pytest.mark.parametrize(
    "case", ["flatten", "shortcut_relu_after_sum", "shortcut_mul_after_sum", "pool_view_sum", "keywords"]
)
def test_review_cases_match_the_plain_path(case: str) -> None:
    x = torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(3))
    q = _quantized(Three(case), x)
    with torch.no_grad():
        flow, plain = q(x), _plain(q)(x)
    flow_t = flow if isinstance(flow, tuple) else (flow,)
    plain_t = plain if isinstance(plain, tuple) else (plain,)
    for f, p in zip(flow_t, plain_t, strict=True):
        assert type(f) is torch.Tensor and f.shape == p.shape
        # One rounding to a conv's 8-bit grid (c1's or c2's) is all the flow may add, here at most a few steps.
        steps = max(input_grid(q.c1)[0], input_grid(q.c2)[0])
        gain = float(q.c2.dequantized_weight(torch.float32).abs().sum(dim=(1, 2, 3)).max())
        assert float((f - p).abs().max()) <= max(2 * steps, gain * steps) * 1.01 + 1e-5, case


def test_in_place_ops_on_slices_of_activations_are_refused() -> None:
    class SliceInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.c0(x)
            b = self.c1(a)
            a[:, :4].relu_()
            return b + a[:, :, 2:-2, 2:-2].mean()

    q = _quantized(SliceInPlace(), torch.randn(4, 3, 12, 12))
    with torch.no_grad(), pytest.raises(QuantaError, match="slice of an int8 activation"):
        q(torch.randn(2, 3, 12, 12))
    with torch.no_grad():
        _plain(q)(torch.randn(2, 3, 12, 12))  # the plain path computes it


def test_hooks_can_read_activations_as_numpy_and_bn_parameters_keep_gradients() -> None:
    q = _quantized(WithBatchNorm(), torch.randn(8, 3, 12, 12))
    got: list[object] = []
    q.conv1.register_forward_hook(lambda _m, _a, y: got.append(y.numpy().shape))
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        q(x)
    assert got == [(2, 8, 12, 12)]
    for p in q.bn1.parameters():
        p.requires_grad_(True)
    out = q(x)  # grad mode: the BatchNorm is computed in float so that its parameters get gradients
    assert out.requires_grad == _plain(q)(x).requires_grad is True
    out.sum().backward()
    assert q.bn1.weight.grad is not None
