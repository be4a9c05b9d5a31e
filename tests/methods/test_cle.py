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


@needs_data
@pytest.mark.xfail(
    strict=True,
    reason="LeNet-5 has no BatchNorm and its channel ranges are balanced already (max/min <= 8); CLE's data-free "
    "scales raise its per-tensor W4A8 error instead of lowering it (measured ratio ~1.15).",
)
def test_cle_reduces_lenet5_error(lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    model, calib, held = lenet
    assert _mse_ratio(model, calib, held) <= 0.9
