"""ResNet-20 on the CIFAR-10 sample: float vs post-training vs quantization-aware training (issue 5).

The pretrained ResNet-20 (../shared/data/resnet_cifar10) is fine-tuned with quantization in the loop on the sample's
400 train images and evaluated on its 150 test images (../shared/data/cifar10_sample). The 400 train images are in
CIFAR-10's train split, which the model was trained on (100% top-1 there), so no accuracy is reported on them.
Training data: random crop with 4-pixel (black) padding and horizontal flip, seeded, the same batches for every
preset; batch 50 (8 steps an epoch). Loop (``_train``): ``quanta.train.fit`` with Adam (lr 1e-4 for the weights and
BatchNorms, 1e-3 for presets with binary weights, 1e-3 for LSQ's steps) and knowledge distillation from the
pretrained float model (``kd_weight`` 0.8, T = 2); the BatchNorm running statistics are re-estimated on one pass of
augmented batches before training and before the last epoch, which runs with observers and BatchNorm statistics
frozen (``quanta.qat.freeze``). QAT: ``quanta.prepare_qat(model, preset, calib=...)`` (each Conv+BatchNorm folded
while training), the loop for ``--epochs`` epochs, then ``quanta.convert``; the QAT accuracy is the converted
(packed) model's. PTQ calibrates on the 400 train images; ``w4a4-lsq``'s PTQ is ``w4a4``'s. The float model
fine-tuned with the same loop is printed as a reference line.

150 test images make each accuracy step 0.67 points (one image), so the table also gives the agreement of the QAT
model's top-1 predictions with the pretrained float model's on the test images. The last column is the training-step
time with fake quantization over the float model's (one batch of 50, cross-entropy, Adam; the median ratio of 5
rounds of one step each, interleaved so machine load hits both alike). ``bnn01``: binary weights with 1-bit
activations coded {0, s} (see ``_binary_01``): every quantized convolution of ResNet-20 reads a post-ReLU input.
After the table, for every preset: the largest difference between the converted model's logits and the
fake-quantized model's in eval mode, and their top-1 agreement. Last line: wall and CPU time of the whole run.

    .venv/bin/python benchmarks/bench_qat_resnet.py [--data ../shared/data] [--epochs 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.qat import freeze, is_prepared
from quanta.qat.batchnorm import freeze_batchnorm, unfreeze_batchnorm
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.train import fit
from quanta.zoo import cifar10_sample, load_pretrained
from quanta.zoo.data import CIFAR_MEAN, CIFAR_STD

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRESETS = ("w8a8", "w4a4", "w4a4-lsq", "ternary", "binary", "bnn", "bnn01")
BATCH = 50
KD_WEIGHT = 0.8
LR = {"binary": 1e-3, "bnn": 1e-3, "bnn01": 1e-3}  # binary weights (sign of the master weight) move too slowly at 1e-4


class Augmented:
    """Batches of ``(x, y)``, re-drawn on each iteration: random crop with 4-pixel black padding and horizontal
    flip. Two instances with the same seed yield the same batches, epoch after epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        self.x, self.y = x, y
        self.generator = torch.Generator().manual_seed(seed)
        # black in normalized units: the padding torchvision's RandomCrop(32, padding=4) adds before normalizing
        self.black = (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).reshape(1, 3, 1, 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g, n = self.generator, len(self.x)
        padded = nn.functional.pad(self.x - self.black, (4, 4, 4, 4)) + self.black
        dy, dx = torch.randint(0, 9, (2, n), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        crops = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
        crops[flip] = crops[flip].flip(-1)
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            yield crops[idx], self.y[idx]


def _recalibrate_batchnorm(model: nn.Module, data: Augmented) -> None:
    """Re-estimate every BatchNorm's running statistics over one pass of ``data`` (cumulative average), the rest of
    the model in eval mode (input observers unchanged); the pretrained statistics do not fit binary weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


def _train(model: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    """Fine-tune in place with distillation from ``teacher``: BatchNorm statistics re-estimated, ``epochs - 1``
    epochs, statistics re-estimated again, then the last epoch with BatchNorms (and a QAT model's observers) frozen."""
    steps = [p for n, p in model.named_parameters() if n.endswith("step")]
    others = [p for n, p in model.named_parameters() if not n.endswith("step")]
    opt = torch.optim.Adam([{"params": others, "lr": lr}, {"params": steps, "lr": 1e-3}])
    qat = is_prepared(model)
    data = Augmented(x, y)
    _recalibrate_batchnorm(model, data)
    if epochs > 1:
        fit(model, data, epochs=epochs - 1, optimizer=opt, teacher=teacher, kd_weight=KD_WEIGHT)
        _recalibrate_batchnorm(model, data)
    if qat:
        freeze(model)
    else:
        freeze_batchnorm(model)
    fit(model, data, epochs=1, optimizer=opt, teacher=teacher, kd_weight=KD_WEIGHT)
    unfreeze_batchnorm(model)  # convert does it too; the float model needs it


def _step_ratio(model: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 5) -> float:
    """Training-step time (forward, backward, Adam on a fixed batch) of ``model`` over ``reference``'s, on copies:
    the median over ``rounds`` rounds of one step each, interleaved so machine load hits both alike."""
    models = [copy.deepcopy(m).train() for m in (model, reference)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-6) for m in models]
    ratios = []
    for r in range(rounds + 1):  # round 0 warms up
        times = []
        for m, opt in zip(models, opts, strict=True):
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        if r:
            ratios.append(times[0] / times[1])
    return sorted(ratios)[len(ratios) // 2]


def _binary_01(model: nn.Module) -> Recipe:
    """Binary weights and 1-bit activations coded {0, s} (uint1, LSQ-learned s), first and last layers in float.

    The ``bnn`` preset's sign activations (+-a) see ResNet's post-ReLU inputs, all >= 0, as one level.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weight, act = QScheme.parse("binary:ch"), QScheme.parse("uint1:tensor:asym")
    return Recipe(rules=[Rule(pattern=n, weight=weight, activation=act, method="lsq") for n in names[1:-1]])


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PRESETS), help="Comma-separated presets.")
    args = parser.parse_args()
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    data = cifar10_sample(args.data / "cifar10_sample")
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    base = load_pretrained("resnet20", args.data / "resnet_cifar10" / "resnet20-12fca82f.th").eval()
    float_pred = _logits(base, x_test).argmax(-1)

    def acc(pred: torch.Tensor) -> float:
        return 100 * float((pred == y_test).float().mean())

    def agree(pred: torch.Tensor) -> float:
        return 100 * float((pred == float_pred).float().mean())

    tuned = copy.deepcopy(base)
    _train(tuned, base, x_train, y_train, args.epochs, 1e-4)  # float fine-tuned the same way: the reference
    tuned_pred = _logits(tuned, x_test).argmax(-1)
    print(
        f"ResNet-20 float32 pretrained {acc(float_pred):.2f}% on the 150 test images; fine-tuned the same way "
        f"({args.epochs} epochs): {acc(tuned_pred):.2f}%, {agree(tuned_pred):.2f}% agreement with pretrained"
    )
    calib = [x_train[i : i + 100] for i in range(0, len(x_train), 100)]
    batch = (x_train[:BATCH], y_train[:BATCH])
    rows, checks = [], []
    for preset in args.presets.split(","):
        t0 = time.perf_counter()
        recipe: Recipe | str = _binary_01(base) if preset == "bnn01" else preset
        ptq_recipe: Recipe | str = recipe if preset == "bnn01" else preset.replace("-lsq", "")
        if preset == "bnn01":  # PTQ of the same schemes (the method slot says rtn there)
            ptq_recipe = Recipe(rules=[Rule(r.pattern, weight=r.weight, activation=r.activation) for r in recipe.rules])  # type: ignore[union-attr]
        ptq = acc(_logits(quanta.quantize(copy.deepcopy(base), ptq_recipe, calib=calib), x_test).argmax(-1))
        model = quanta.prepare_qat(copy.deepcopy(base), recipe, calib=calib)
        _train(model, base, x_train, y_train, args.epochs, LR.get(preset, 1e-4))
        ratio = _step_ratio(model, base, *batch)
        fake = _logits(model, x_test)
        out = _logits(quanta.convert(model.eval()), x_test)
        pred = out.argmax(-1)
        rows.append(
            f"| {preset} | {acc(float_pred):.2f} | {ptq:.2f} | {acc(pred):.2f} | {agree(pred):.2f} | {ratio:.2f} |"
        )
        agreement = 100 * float((pred == fake.argmax(-1)).float().mean())
        checks.append(
            f"{preset:<9} max |converted - fake-quantized| {float((out - fake).abs().max()):.3g} "
            f"(logits up to {float(fake.abs().max()):.3g}), top-1 agreement {agreement:.2f}%"
        )
        print(f"{rows[-1]} {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print("| preset | float % | PTQ % | QAT % | QAT agreement with float % | training step time vs float |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("Converted vs fake-quantized model (eval mode, 150 test images):")
    print("\n".join(checks))
    print(
        f"Total {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU on "
        f"{torch.get_num_threads()} threads. Command: {' '.join([Path(sys.executable).name, *sys.argv])}"
    )


if __name__ == "__main__":
    main()
