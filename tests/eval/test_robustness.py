"""Robustness: accuracy under seeded Gaussian noise and FGSM, checked against plain accuracy, a closed-form FGSM
on a linear model, and the real LeNet-5 on MNIST (float and quantized)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import quanta
from quanta.errors import QuantaError
from quanta.eval import accuracy
from quanta.eval.robustness import fgsm_accuracy, noise_accuracy, robustness

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEIGHTS = DATA / "lenet5_mnist" / "mnist_cnn.pt"


def test_fgsm_matches_the_closed_form_gradient_of_a_linear_softmax_model() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    # d CE / d x = W^T (softmax(Wx + b) - onehot(y)) / n (mean reduction; the sign ignores the 1/n)
    with torch.no_grad():
        p = torch.softmax(net(x), -1)
        grad = (p - torch.nn.functional.one_hot(y, 3).float()) @ net.weight
        x_adv = x + 0.3 * grad.sign()
        expected = float((net(x_adv).argmax(-1) == y).float().mean())
    assert fgsm_accuracy(net, (x, y), 0.3, batch_size=64) == expected
    assert all(p.grad is None for p in net.parameters())  # only the input gradient is taken


def test_level_zero_is_plain_accuracy_and_noise_is_seeded() -> None:
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    data = (torch.randn(100, 5), torch.randint(0, 4, (100,)))
    plain = accuracy(net, data)
    r = robustness({"a": net}, data, sigmas=[0.0, 2.0], epsilons=[0.0, 0.5], seed=3)
    assert r.noise["a"][0] == plain == r.fgsm["a"][0]
    again = robustness({"a": net}, data, sigmas=[0.0, 2.0], epsilons=[0.0, 0.5], seed=3)
    assert again == r
    expected = accuracy(net, (data[0] + 2.0 * torch.randn(100, 5, generator=torch.Generator().manual_seed(4)), data[1]))
    assert r.noise["a"][1] == expected  # sigma index 1 draws with seed + 1, the same for every model
    assert noise_accuracy(net, data, 2.0, seed=4) == expected


def test_bad_levels_and_data_are_refused() -> None:
    net = torch.nn.Linear(2, 2)
    data = (torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(QuantaError, match="non-negative"):
        robustness({"a": net}, data, sigmas=[-1.0])
    with pytest.raises(QuantaError, match="labels"):
        fgsm_accuracy(net, (torch.randn(4, 2), torch.zeros(3, dtype=torch.long)), 0.1)
    with pytest.raises(QuantaError, match="at least one model"):
        robustness({}, data)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} (shared real data) is not present")
def test_fgsm_lowers_lenet_accuracy_float_and_quantized() -> None:
    from quanta.zoo import load_pretrained, mnist_test

    torch.set_num_threads(1)
    x, y = mnist_test(DATA / "mnist_test")
    data = (x[-300:], y[-300:])
    float_net = load_pretrained("lenet5", WEIGHTS)
    quant = quanta.quantize(load_pretrained("lenet5", WEIGHTS), "w8a8", calib=[x[:128]])
    r = robustness({"float": float_net, "w8a8": quant}, data, sigmas=[0.0, 1.0], epsilons=[0.0, 0.3])
    for name, model in (("float", float_net), ("w8a8", quant)):
        assert r.noise[name][0] == r.fgsm[name][0] == accuracy(model, data)
        assert r.fgsm[name][1] < r.fgsm[name][0] - 0.05  # the attack works through the int8 kernels too
