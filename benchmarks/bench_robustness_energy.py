"""Robustness and estimated energy of LeNet-5 / MNIST under each quantized recipe, against the float model.

Calibrate on the first 2,000 MNIST test images, evaluate on the last 1,000: clean accuracy, accuracy under
seeded Gaussian input noise (sigma in normalized input units) and under FGSM (each model attacked through its own
input gradient), and the energy per inference estimated by ``quanta.eval.energy`` (Horowitz ISSCC 2014 per-op
energies; weights read once from DRAM, activations through SRAM). One run, one thread.

    python benchmarks/bench_robustness_energy.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import quanta
from quanta.eval.energy import estimate_energy
from quanta.eval.robustness import robustness
from quanta.zoo import load_pretrained, mnist_test

RECIPES = ("w8a16", "w8a8", "w4a16-g32", "w4a4", "bnn")
SIGMAS = (0.0, 0.5, 1.0, 1.5)
EPSILONS = (0.0, 0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights = args.data / "lenet5_mnist" / "mnist_cnn.pt"
    x, y = mnist_test(args.data / "mnist_test")
    calib, test = [x[:2000]], (x[-1000:], y[-1000:])
    models = {"float": load_pretrained("lenet5", weights)}
    for recipe in RECIPES:
        models[recipe] = quanta.quantize(load_pretrained("lenet5", weights), recipe, calib=calib)
    r = robustness(models, test, SIGMAS, EPSILONS, seed=0)
    energy = {name: estimate_energy(m, x[:1]) for name, m in models.items()}
    base = energy["float"].total_pj
    head = ["recipe", *(f"noise {s:g}" for s in SIGMAS[1:]), *(f"fgsm {e:g}" for e in EPSILONS[1:])]
    print(f"LeNet-5, {len(test[1]):,} MNIST test images; accuracy % (clean = noise 0)\n")
    print("| " + " | ".join(["recipe", "clean", *head[1:]]) + " |")
    print("|" + "---|" * (len(head) + 1))
    for name in models:
        cells = [f"{100 * a:.1f}" for a in (r.noise[name][0], *r.noise[name][1:], *r.fgsm[name][1:])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nestimated energy per inference (one 32x32 image)\n")
    print(
        "| recipe | MACs by precision | compute uJ | weights (DRAM) uJ | activations (SRAM) uJ | total uJ | vs float |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, est in energy.items():
        macs = ", ".join(f"{p} {n:,}" for p, n in est.macs_by_precision.items() if n)
        print(
            f"| {name} | {macs} | {est.compute_pj / 1e6:.3f} | {est.weight_memory_pj / 1e6:.3f} | "
            f"{est.act_memory_pj / 1e6:.3f} | {est.total_pj / 1e6:.3f} | {base / est.total_pj:.1f}x less |"
        )


if __name__ == "__main__":
    main()
