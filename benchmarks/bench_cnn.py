"""Accuracy, size and latency of real pretrained CNNs under quanta's presets (issue 3 targets).

LeNet-5 / MNIST: calibrate on the first 8,000 test images, evaluate on the last 2,000. ResNet-20 / CIFAR-10
sample: calibrate on the 400 train images, evaluate on the 150 test images. Latency: one forward pass of the
whole evaluation batch, median of 5 rounds, fp32 inputs (so every quanta row takes the reference path).

    python benchmarks/bench_cnn.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.eval import accuracy
from quanta.zoo import cifar10_sample, load_pretrained, mnist_test

PRESETS = ("w8a16", "w8a8", "w8a8-dyn", "w4a16-g32", "nf4-g64", "w3a16-g16", "ternary")


def _latency(model: torch.nn.Module, x: torch.Tensor, rounds: int = 5) -> float:
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    x, y = mnist_test(args.data / "mnist_test")
    cifar = cifar10_sample(args.data / "cifar10_sample")
    cases = [
        ("LeNet-5 / MNIST", "lenet5", args.data / "lenet5_mnist" / "mnist_cnn.pt", x[:8000], (x[8000:], y[8000:])),
        (
            "ResNet-20 / CIFAR sample",
            "resnet20",
            args.data / "resnet_cifar10" / "resnet20-12fca82f.th",
            cifar["x_train"],
            (cifar["x_test"], cifar["y_test"]),
        ),
    ]
    print("| model | recipe | accuracy | vs float | bytes | x smaller | latency ms | vs float |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for title, name, path, calib, test in cases:
        model = load_pretrained(name, path)
        base_acc, base_bytes, base_ms = accuracy(model, test), quanta.model_nbytes(model), _latency(model, test[0])
        print(f"| {title} | float | {base_acc:.2%} | | {base_bytes:,} | 1.0x | {base_ms * 1e3:.1f} | 1.00x |")
        for preset in PRESETS:
            q = quanta.quantize(load_pretrained(name, path), preset, calib=calib.split(500))
            acc, nbytes, ms = accuracy(q, test), quanta.model_nbytes(q), _latency(q, test[0])
            print(
                f"| {title} | {preset} | {acc:.2%} | {100 * (acc - base_acc):+.2f} pt | {nbytes:,} | "
                f"{base_bytes / nbytes:.1f}x | {ms * 1e3:.1f} | {base_ms / ms:.2f}x |"
            )
    print("\nCommand: python benchmarks/bench_cnn.py")


if __name__ == "__main__":
    main()
