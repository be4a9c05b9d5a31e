"""Real pretrained models from ../shared/data: float accuracy as SOURCE.md states, and weight-only / w8a8 PTQ."""

from pathlib import Path

import pytest
import torch

import quanta
from quanta.eval import accuracy
from quanta.zoo import cifar10_sample, load_pretrained, mnist_test

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")


@pytest.fixture(scope="module")
def resnet_data() -> dict[str, torch.Tensor]:
    return cifar10_sample(DATA / "cifar10_sample")


def test_lenet5_float_and_w8a8(tmp_path: Path) -> None:
    x, y = mnist_test(DATA / "mnist_test")
    model = load_pretrained("lenet5", DATA / "lenet5_mnist" / "mnist_cnn.pt")
    float_acc = accuracy(model, (x[8000:], y[8000:]))
    assert accuracy(model, (x, y)) == pytest.approx(0.9904, abs=1e-4)  # SOURCE.md: 99.04%
    quanta.quantize(model, "w8a8", calib=x[:8000].split(500))
    assert abs(accuracy(model, (x[8000:], y[8000:])) - float_acc) <= 0.005  # the target: within 0.5 pt
    loaded = quanta.load(
        quanta.save(model, tmp_path / "lenet"), load_pretrained("lenet5", DATA / "lenet5_mnist" / "mnist_cnn.pt")
    )
    assert torch.equal(loaded(x[:64]), model(x[:64]))


def test_resnet20_float_and_ptq(resnet_data: dict[str, torch.Tensor]) -> None:
    path = DATA / "resnet_cifar10" / "resnet20-12fca82f.th"
    test = (resnet_data["x_test"], resnet_data["y_test"])
    model = load_pretrained("resnet20", path)
    float_acc = accuracy(model, test)
    assert float_acc == pytest.approx(139 / 150)  # SOURCE.md: 92.7% (139 of 150)
    w8 = quanta.quantize(load_pretrained("resnet20", path), "w8a16")
    assert abs(accuracy(w8, test) - float_acc) <= 1 / 150 + 1e-9
    w8a8 = quanta.quantize(load_pretrained("resnet20", path), "w8a8", calib=resnet_data["x_train"].split(100))
    assert abs(accuracy(w8a8, test) - float_acc) <= 2 / 150 + 1e-9
    assert quanta.model_nbytes(w8) < 0.3 * quanta.model_nbytes(model)
