import copy
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.errors import QuantaError
from quanta.methods import equalize, find_pairs, layer_output_errors
from tests.methods.conftest import W4A8_TENSOR, needs_data, weight_layers


def _imbalanced() -> nn.Sequential:
    """Three Linear layers whose channel ranges differ by up to 100x, as BatchNorm folding leaves them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for first, second in ((model[0], model[2]), (model[2], model[4])):
            s = torch.logspace(-1, 1, 32)[torch.randperm(32)]  # a positive rescaling keeps the function
            first.weight.mul_(s[:, None])
            first.bias.mul_(s)
            second.weight.div_(s[None, :])
    return model.eval()


def _mse_ratio(model: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor]) -> float:
    """Mean layer-output MSE of per-tensor W4A8 after CLE over that of plain RTN (held-out data, float coords)."""
    names = weight_layers(model)
    rtn = quanta.quantize(copy.deepcopy(model), W4A8_TENSOR, calib=calib)
    equalized = copy.deepcopy(model)
    scales = {e.first: e.scale for e in equalize(equalized, calib[0])}
    cle = quanta.quantize(equalized, W4A8_TENSOR, calib=calib)
    before = statistics.mean(layer_output_errors(model, rtn, held, names).values())
    after = statistics.mean(layer_output_errors(model, cle, held, names, scales).values())
    return after / before


def test_cle_keeps_the_function_and_equalizes_ranges() -> None:
    model = _imbalanced()
    x = torch.randn(64, 16)
    expected = model(x)
    done = equalize(model, x)
    assert [(e.first, e.second) for e in done] == [("0", "2"), ("2", "4")]
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # The paper's fixed point: each channel's range is the same in both layers of the last pair it joins.
    r1 = model[2].weight.abs().amax(1)
    r2 = model[4].weight.abs().amax(0)
    torch.testing.assert_close(r1, r2, rtol=1e-3, atol=0)


def test_cle_reduces_rtn_error_on_an_imbalanced_model() -> None:
    model = _imbalanced()
    data = torch.randn(512, 16)
    assert _mse_ratio(model, list(data[:256].split(128)), list(data[256:].split(128))) <= 0.9


def test_pairs_need_homogeneous_modules_between() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.ReLU(), nn.MaxPool1d(1), nn.Linear(8, 2))
    assert find_pairs(model) == [("2", "5")]


def test_a_flatten_pairs_a_conv_channel_with_its_block_of_linear_columns() -> None:
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(2, 4, 3), nn.Linear(4 * 2 * 2, 3)  # (n, 4, 4, 4) -> pool (n, 4, 2, 2) -> (n, 16)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), fc).eval()
    with torch.no_grad():
        s = torch.tensor([0.1, 1.0, 10.0, 3.0])
        conv.weight.mul_(s[:, None, None, None])
        conv.bias.mul_(s)  # type: ignore[union-attr]
        fc.weight.div_(s.repeat_interleave(4)[None, :])
    x = torch.randn(32, 2, 6, 6)
    expected = model(x)
    assert find_pairs(model) == [("0", "4")]
    (done,) = equalize(model, x)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # Channel c's range in the conv equals that of fc columns 4c .. 4c+3, and s undid the imbalance.
    r1 = conv.weight.abs().amax((1, 2, 3))
    r2 = fc.weight.abs().reshape(3, 4, 4).amax((0, 2))
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=0)
    assert float(done.scale.max() / done.scale.min()) > 10


class _TwoParents(nn.Module):
    """A conv in one container, a Linear in another, flattened in forward (as LeNet-5's c5 -> f6)."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Sequential(nn.Linear(4 * 4 * 4, 5))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if self.residual:  # an add invisible to hooks: rescaling features.2 alone would change the output
            y = y + self.features[0](x)
        return self.head(y.flatten(1))


def test_call_order_pairs_across_containers_are_confirmed_on_the_example() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    plain = _TwoParents(residual=False).eval()
    assert find_pairs(plain) == [("features.0", "features.2")]  # the module tree alone cannot see across
    assert find_pairs(plain, example_inputs=x) == [("features.0", "features.2"), ("features.2", "head.0")]
    expected = plain(x)
    assert len(equalize(plain, x)) == 2
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    # features.2 -> head.0 is joined by the add, so the test rescaling changes the output: not a pair.
    residual = _TwoParents(residual=True).eval()
    assert find_pairs(residual, example_inputs=x) == [("features.0", "features.2")]
    assert find_pairs(residual, names={"features.2", "head.0"}, example_inputs=x) == []


def test_a_functional_nonlinearity_is_detected_and_undone() -> None:
    class Hidden(nn.Module):  # sigmoid between the layers is called in forward, invisible in the module tree
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.sigmoid(self.a(x)))

    torch.manual_seed(0)
    model = Hidden()
    with torch.no_grad():
        model.a.weight[0].mul_(50)
    x = torch.randn(16, 4)
    expected = model(x)
    with pytest.raises(QuantaError, match="restored"):
        equalize(model, x)
    assert torch.equal(model(x), expected)


@needs_data
def test_cle_reduces_resnet20_error(resnet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    model, calib, held = resnet
    x = held[0]
    copy_ = copy.deepcopy(model)
    assert len(equalize(copy_, x[:8])) == 9  # conv1 -> conv2 in each of the 9 blocks
    torch.testing.assert_close(copy_(x), model(x), rtol=1e-4, atol=1e-4)
    assert _mse_ratio(model, calib, held) <= 0.9


def _precision(model: nn.Module, first: str, second: str) -> float:
    """The paper's objective for one pair: sum_i (r1_i / R1) (r2_i / R2), channel over tensor range."""
    w1, w2 = (model.get_submodule(n).weight.detach() for n in (first, second))  # type: ignore[operator]
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(1)
    r2 = w2.abs().transpose(0, 1).reshape(len(r1), -1).amax(1)  # a flattened channel's column block
    return float((r1 / r1.max() * r2 / w2.abs().max()).sum())


@needs_data
def test_cle_pairs_lenet5_across_the_flatten_and_raises_the_papers_objective(
    lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]],
) -> None:
    model, calib, held = lenet
    pairs = find_pairs(model, example_inputs=calib[0][:8])
    # The module tree's three pairs, then c5 (n, 120, 1, 1) -> relu5 -> flatten in forward -> f6 (n, 120).
    tree = [("convnet.c1", "convnet.c3"), ("convnet.c3", "convnet.c5"), ("fc.f6", "fc.f7")]
    assert pairs == [*tree, ("convnet.c5", "fc.f6")]
    equalized = copy.deepcopy(model)
    assert [(e.first, e.second) for e in equalize(equalized, calib[0][:8])] == pairs
    torch.testing.assert_close(equalized(held[0]), model(held[0]), rtol=1e-4, atol=1e-4)
    for first, second in pairs:
        assert _precision(equalized, first, second) > _precision(model, first, second)


@needs_data
@pytest.mark.xfail(
    strict=True,
    reason="LeNet-5 has no BatchNorm and balanced channel ranges (max/min <= 8). With all four pairs (c5 -> f6 "
    "included) CLE lowers each layer's own W4 error (0.61-0.98x) but the end-to-end ratio is ~1.06: RTN's rounding "
    "errors happen to cancel, and +-2% random function-preserving rescalings alone give RTN 1.03-1.12x. The "
    "activations are 0.15% of the error, so bias absorption cannot help (see docs/recipes.md).",
)
def test_cle_reduces_lenet5_error(lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    model, calib, held = lenet
    assert _mse_ratio(model, calib, held) <= 0.9
