"""LeNet-5 on MNIST: float vs post-training vs quantization-aware training, at equal schemes (issue 5).

The pretrained LeNet-5 (../shared/data/lenet5_mnist) is fine-tuned with quantization in the loop on the first 8,000
MNIST test images and evaluated on the other 2,000 (the split the issue names); PTQ calibrates on 512 of the 8,000.
QAT: ``quanta.prepare_qat(model, preset)``, Adam (lr 1e-4 for the weights, 1e-3 for learned steps, zero points
and PACT's clipping levels), batch 128, ``--epochs`` passes, then ``quanta.convert``; the accuracy is the converted
(packed) model's. The last column is
the training-step time with fake quantization over the float model's (same batch of 128, Adam, median of 15 steps,
measured back to back). ``bnn01``: binary weights with 1-bit activations coded {0, s} (see ``_binary_01``).

    .venv/bin/python benchmarks/bench_qat.py [--data ../shared/data] [--epochs 3]
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.eval import accuracy
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.zoo import load_pretrained, mnist_test

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRESETS = ("w8a8", "w4a4", "w4a4-lsq", "w4a4-lsqplus", "w4a4-pact", "w2a8-lsq", "ternary", "binary", "bnn", "bnn01")
RANGE_PARAMETERS = ("step", "input_quantizer.zero", "weight_quantizer.zero", "alpha")  # learned ranges: lr 1e-3
BATCH = 128


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> None:
    """Fine-tune in place."""
    steps = [p for n, p in model.named_parameters() if n.endswith(RANGE_PARAMETERS)]
    others = [p for n, p in model.named_parameters() if not n.endswith(RANGE_PARAMETERS)]
    opt = torch.optim.Adam([{"params": others, "lr": 1e-4}, {"params": steps, "lr": 1e-3}])
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 15) -> float:
    """Median seconds of one training step (forward, backward, Adam) on a fixed batch, on a copy of ``model``."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _binary_01(model: nn.Module) -> Recipe:
    """Binary weights and 1-bit activations coded {0, s} (uint1, LSQ-learned s), first and last layers in float.

    The ``bnn`` preset's sign activations (+-a) see LeNet's post-ReLU inputs, all >= 0, as one level; binarized
    networks with sign activations put BatchNorm and hardtanh before the binarizer, which this LeNet has not.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weight, act = QScheme.parse("binary:ch"), QScheme.parse("uint1:tensor:asym")
    return Recipe(rules=[Rule(pattern=n, weight=weight, activation=act, method="lsq") for n in names[1:-1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PRESETS), help="Comma-separated presets.")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = mnist_test(args.data / "mnist_test")
    x_train, y_train, x_test, y_test = x[:8000], y[:8000], x[8000:], y[8000:]
    base = load_pretrained("lenet5", args.data / "lenet5_mnist" / "mnist_cnn.pt").eval()

    def acc(model: nn.Module) -> float:
        return 100 * accuracy(model, [(x_test[i : i + 500], y_test[i : i + 500]) for i in range(0, 2000, 500)])

    float_model = copy.deepcopy(base)
    _train(float_model, x_train, y_train, args.epochs)  # float fine-tuned the same way: the reference
    print(f"float32 pretrained {acc(base):.2f}%, fine-tuned {acc(float_model):.2f}% on the 2,000 held-out images")
    print(f"{'preset':<10} {'PTQ %':>7} {'QAT %':>7} {'QAT - float':>12} {'QAT - PTQ':>10} {'step time x':>12}")
    calib = [x_train[i : i + 128] for i in range(0, 512, 128)]
    batch = (x_train[:BATCH], y_train[:BATCH])
    for preset in args.presets.split(","):
        recipe: Recipe | str = _binary_01(base) if preset == "bnn01" else preset
        ptq_recipe: Recipe | str = recipe if preset == "bnn01" else re.sub(r"-(lsqplus|lsq|pact)$", "", preset)
        if preset == "bnn01":  # PTQ of the same schemes (the method slot says rtn there)
            ptq_recipe = Recipe(rules=[Rule(r.pattern, weight=r.weight, activation=r.activation) for r in recipe.rules])  # type: ignore[union-attr]
        ptq = acc(quanta.quantize(copy.deepcopy(base), ptq_recipe, calib=calib))  # same schemes, no training
        model = quanta.prepare_qat(copy.deepcopy(base), recipe)
        _train(model, x_train, y_train, args.epochs)
        ratio = _step_seconds(model, *batch) / _step_seconds(base, *batch)  # measured back to back
        qat = acc(quanta.convert(model))
        print(
            f"{preset:<10} {ptq:>7.2f} {qat:>7.2f} {qat - acc(float_model):>+12.2f} {qat - ptq:>+10.2f} {ratio:>12.2f}"
        )
    print(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
