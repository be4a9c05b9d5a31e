from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import QuantaError
from quanta.eval import accuracy
from quanta.methods import fold_batchnorm

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _convbn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
    )
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_folding_keeps_outputs_and_removes_batchnorms() -> None:
    model = _convbn()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    pairs = fold_batchnorm(model, example_inputs=x)
    assert pairs == [("0", "1"), ("3", "4")]
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_wrong_pairing_is_detected_and_undone() -> None:
    class Crossed(nn.Module):  # bn follows conv in registration order but normalises something else
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.bn(x)

    model = Crossed().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
        model.bn.weight.fill_(2.0)
    x = torch.randn(1, 3, 4, 4)
    expected = model(x)
    with pytest.raises(QuantaError, match="restored"):
        fold_batchnorm(model, example_inputs=x)
    assert isinstance(model.bn, nn.BatchNorm2d) and torch.equal(model(x), expected)
    with pytest.raises(QuantaError, match="eval"):
        fold_batchnorm(Crossed())


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")
def test_folded_then_quantized_resnet20_matches_unfolded_float() -> None:
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    path = DATA / "resnet_cifar10" / "resnet20-12fca82f.th"
    test = (data["x_test"], data["y_test"])
    float_acc = accuracy(load_pretrained("resnet20", path), test)
    model = load_pretrained("resnet20", path)
    assert len(fold_batchnorm(model, example_inputs=data["x_test"][:8])) == 19
    quanta.quantize(model, "w8a16")
    assert abs(accuracy(model, test) - float_acc) <= 1 / 150 + 1e-9
