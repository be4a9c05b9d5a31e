"""CLE, bias correction, AdaRound, GPTQ and HQQ vs plain RTN on LeNet-5/MNIST and ResNet-20/CIFAR sample (real data).

Protocols (issue 3): LeNet-5 calibrates on the first 8,000 MNIST test images and is evaluated on the last 2,000;
ResNet-20 (BatchNorm folded, function-preserving) calibrates on the 400 sample train images and is evaluated on
the 150 test images. Layer-output MSE is the mean over weight layers of the relative MSE against the float model,
end to end on the held-out images (CLE-rescaled outputs are mapped back to float coordinates).
CLE and bias correction run at per-tensor W4A8 (int4:tensor:asym weights, int8:tensor:asym activations);
AdaRound at int4:g32:asym:sf16 weights (the w4a16-g32 preset's scheme).

    .venv/bin/python benchmarks/bench_methods.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.eval import accuracy
from quanta.methods import (
    adaround_weight,
    correct_bias,
    equalize,
    find_pairs,
    fold_batchnorm,
    layer_hessians,
    layer_output_errors,
)
from quanta.methods.cle import _rescale
from quanta.methods.layers import output_channels
from quanta.nn.base import quant_class_for
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.zoo import cifar10_sample, load_pretrained, mnist_test

W4A8 = Recipe(rules=(Rule(weight=QScheme.parse("int4:tensor:asym"), activation=QScheme.parse("int8:tensor:asym")),))
G32 = QScheme.parse("int4:g32:asym:sf16")


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _swap(model: nn.Module, scheme: QScheme, hessians: dict[str, torch.Tensor] | None) -> nn.Module:
    out = copy.deepcopy(model)
    for name in _layers(model):
        layer = out.get_submodule(name)
        if hessians is None:
            qt = quantize_tensor(layer.weight.detach(), scheme)
        else:
            qt = adaround_weight(layer, scheme, hessians[name])
        cls = quant_class_for(layer)
        assert cls is not None
        out.set_submodule(name, cls.from_float(layer, qt))
    return out


def _mse(
    ref: nn.Module, model: nn.Module, held: list[torch.Tensor], scales: dict[str, torch.Tensor] | None = None
) -> float:
    return statistics.mean(layer_output_errors(ref, model, held, _layers(ref), scales).values())


def _rtn_spread(ref: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor], draws: int = 8) -> list[float]:
    """RTN's W4A8 error after random +-2% function-preserving rescalings of CLE's pairs: how much of a CLE ratio
    is the rounding lottery of per-tensor 4-bit weights rather than the equalization."""
    pairs = find_pairs(ref, example_inputs=calib[0][:8])
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(draws):
        model = copy.deepcopy(ref)
        scales = {}
        for first, second in pairs:
            a, b = model.get_submodule(first), model.get_submodule(second)
            s = torch.exp((2 * torch.rand(output_channels(a), generator=g) - 1) * 0.02)
            _rescale(a, b, s)
            scales[first] = s
        out.append(_mse(ref, quanta.quantize(model, W4A8, calib=calib), held, scales))
    return out


def run(name: str, ref: nn.Module, calib: list[torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> None:
    held = list(test[0].split(500))
    rows: list[tuple[str, float, float, float]] = []  # (label, mse, accuracy, seconds)
    rows.append(("float", 0.0, accuracy(ref, test), 0.0))
    t = time.perf_counter()
    rtn = quanta.quantize(copy.deepcopy(ref), W4A8, calib=calib)
    rows.append(("W4A8 per-tensor RTN", _mse(ref, rtn, held), accuracy(rtn, test), time.perf_counter() - t))
    t = time.perf_counter()
    eq = copy.deepcopy(ref)
    scales = {e.first: e.scale for e in equalize(eq, calib[0][:8])}
    cle = quanta.quantize(eq, W4A8, calib=calib)
    rows.append(("W4A8 per-tensor CLE", _mse(ref, cle, held, scales), accuracy(cle, test), time.perf_counter() - t))
    t = time.perf_counter()
    bc = quanta.quantize(copy.deepcopy(ref), W4A8, calib=calib)
    correct_bias(bc, {n: ref.get_submodule(n) for n in _layers(ref)}, calib)
    rows.append(("W4A8 per-tensor bias corr.", _mse(ref, bc, held), accuracy(bc, test), time.perf_counter() - t))
    t = time.perf_counter()
    g32 = _swap(ref, G32, None)
    rows.append(("w4a16-g32 RTN", _mse(ref, g32, held), accuracy(g32, test), time.perf_counter() - t))
    t = time.perf_counter()
    ada = _swap(ref, G32, layer_hessians(ref, _layers(ref), calib))
    rows.append(("w4a16-g32 AdaRound", _mse(ref, ada, held), accuracy(ada, test), time.perf_counter() - t))
    for label, preset in (("w4a16-g32 GPTQ", "w4a16-g32-gptq"), ("w4a16-g32 HQQ", "w4a16-g32-hqq")):
        t = time.perf_counter()
        model = quanta.quantize(copy.deepcopy(ref), preset, calib=calib)
        rows.append((label, _mse(ref, model, held), accuracy(model, test), time.perf_counter() - t))
    spread = _rtn_spread(ref, calib, held)
    print(f"\n{name}: {len(test[1])} held-out images")
    print(f"| {'method':28} | layer-output rel. MSE | vs RTN | accuracy | vs float (pt) | time (s) |")
    print(f"|{'-' * 30}|----------------------:|-------:|---------:|--------------:|---------:|")
    base = {"W4A8": rows[1][1], "w4a16-g32": rows[4][1]}
    for label, mse, acc, sec in rows:
        ratio = "" if label == "float" else f"{mse / base[label.split()[0]]:.2f}x"
        print(
            f"| {label:28} | {mse:21.5f} | {ratio:>6} | {100 * acc:7.2f}% | {100 * (acc - rows[0][2]):+13.2f} "
            f"| {sec:8.1f} |"
        )
    lo, mid, hi = min(spread), statistics.median(spread), max(spread)
    print(
        f"W4A8 RTN after {len(spread)} random +-2% function-preserving rescalings of CLE's pairs: "
        f"{lo / rows[1][1]:.2f}x .. {hi / rows[1][1]:.2f}x (median {mid / rows[1][1]:.2f}x) of plain RTN"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    x, y = mnist_test(args.data / "mnist_test")
    lenet = load_pretrained("lenet5", args.data / "lenet5_mnist" / "mnist_cnn.pt")
    run("LeNet-5 / MNIST", lenet, list(x[:8000].split(500)), (x[8000:], y[8000:]))
    data = cifar10_sample(args.data / "cifar10_sample")
    resnet = load_pretrained("resnet20", args.data / "resnet_cifar10" / "resnet20-12fca82f.th")
    fold_batchnorm(resnet, example_inputs=data["x_test"][:8])
    run(
        "ResNet-20 / CIFAR-10 sample (BN folded)",
        resnet,
        list(data["x_train"].split(100)),
        (data["x_test"], data["y_test"]),
    )


if __name__ == "__main__":
    main()
