"""Per-layer sensitivity at 2/3/4 bits, and how well each cheap proxy ranks the layers (issue 8).

For ResNet-20 on the CIFAR-10 sample and stories260K on TinyStories, ``quanta.sensitivity`` quantizes one layer at
a time (weights in groups of 32, RTN; everything else float) and measures the mean KL divergence of the model's
output from the float model's on held-out data: the 150 test images; windows of 128 tokens from the end of
tinystories_val (calibration: 128 training images; windows from the start of the file). Then Spearman's rank
correlation of each proxy with the measured KL, per bit width (ranking the layers) and over every pair, oriented
so +1 is a perfect ranking (weight SQNR negated).

    python benchmarks/bench_sensitivity.py            # both models, every layer
    python benchmarks/bench_sensitivity.py --quick    # a few layers of each
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.eval.sensitivity_result import Sensitivity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CANDIDATES = ("w2a16-g32", "w3a16-g32", "w4a16-g32")


def _resnet(quick: bool) -> tuple[str, Sensitivity, float]:
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    net = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th")
    calib = list(data["x_train"][:128].split(64))
    start = time.perf_counter()
    result = quanta.sensitivity(
        net, CANDIDATES, calib, "kl", eval_data=[data["x_test"]], layers="layer1.0.*" if quick else None
    )
    return "ResNet-20, CIFAR-10 sample (KL on 150 test images)", result, time.perf_counter() - start


def _stories(quick: bool) -> tuple[str, Sensitivity, float] | None:
    try:
        from quanta.lm import calibration_windows, load_hf
    except ImportError:
        return None
    model, tokenizer = load_hf(DATA / "stories260K_hf")
    text = (DATA / "tinystories_val" / "tinystories_val.txt").read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer.encode(text[:100_000], add_special_tokens=False))
    held_out = torch.tensor(tokenizer.encode(text[-40_000:], add_special_tokens=False))[-16 * 128 :]
    calib = list(calibration_windows(ids, n=16, length=128, seed=0).split(8))
    start = time.perf_counter()
    result = quanta.sensitivity(
        model, CANDIDATES, calib, "kl", eval_data=held_out, window=128, layers="*.layers.0.mlp.*" if quick else None
    )
    return f"stories260K (KL on {held_out.numel()} held-out tokens)", result, time.perf_counter() - start


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def _report(title: str, result: Sensitivity, seconds: float) -> None:
    print(f"\n## {title}: per-layer KL vs float, one layer quantized (RTN, groups of 32)\n")
    print("| layer | " + " | ".join(CANDIDATES) + " | 2-bit / 4-bit |")
    print("|---|" + "---:|" * (len(CANDIDATES) + 1))
    for layer in result.layers:
        effects = [result.entry(layer, c).effect for c in CANDIDATES]
        ratio = effects[0] / effects[-1] if effects[-1] > 0 else math.inf
        print(f"| {layer} | " + " | ".join(f"{e:.3g}" for e in effects) + f" | {ratio:.0f}x |")
    print("\nSpearman rank correlation of each proxy with the measured KL (+1: ranks layers exactly):\n")
    columns: list[Any] = [*CANDIDATES, None]
    print("| proxy | " + " | ".join(c or "all pairs" for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    per = [result.rank_correlation(c) for c in columns]
    for proxy in per[0]:
        print(f"| {proxy} | " + " | ".join(_fmt(r[proxy]) for r in per) + " |")
    print(
        f"\n{len(result.entries)} measurements in {seconds:.1f} s ({seconds / len(result.entries) * 1e3:.0f} ms each)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few layers of each model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    runs = [_resnet(args.quick), _stories(args.quick)]
    for run in runs:
        if run is not None:
            _report(*run)
    print("\nCommand: .venv/bin/python benchmarks/bench_sensitivity.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
