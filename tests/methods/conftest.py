"""Shared real models and data for the method tests (skipped with a reason when ../shared/data is absent)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from quanta.methods import fold_batchnorm
from quanta.nn.base import quant_class_for
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")

# The setting for CLE and bias correction: per-tensor 4-bit weights, per-tensor 8-bit activations.
W4A8_TENSOR = Recipe(
    rules=(Rule(weight=QScheme.parse("int4:tensor:asym"), activation=QScheme.parse("int8:tensor:asym")),)
)


def weight_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def swap_weights(model: nn.Module, qweights: dict[str, object]) -> nn.Module:
    """A copy of ``model`` with the named layers replaced by packed twins around the given QTensors."""
    out = copy.deepcopy(model)
    for name, qt in qweights.items():
        layer = out.get_submodule(name)
        cls = quant_class_for(layer)
        assert cls is not None
        out.set_submodule(name, cls.from_float(layer, qt))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def lenet() -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """LeNet-5, 256 calibration images (the first test images) and 512 held-out ones (from the last 2,000)."""
    from quanta.zoo import load_pretrained, mnist_test

    x, _ = mnist_test(DATA / "mnist_test")
    model = load_pretrained("lenet5", DATA / "lenet5_mnist" / "mnist_cnn.pt")
    return model, list(x[:256].split(128)), list(x[8000:8512].split(256))


@pytest.fixture(scope="session")
def resnet() -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """ResNet-20 with BatchNorm folded, 100 of the 400 calibration images, the 150 test images held out."""
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    model = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th")
    fold_batchnorm(model, example_inputs=data["x_test"][:8])
    return model, list(data["x_train"][:100].split(50)), list(data["x_test"].split(75))
