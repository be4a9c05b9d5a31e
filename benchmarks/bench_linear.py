"""Latency of one quantized linear layer: quanta's packed modules beside fp32, bf16 and torch's dynamic int8.

Shapes 4096x4096 and 11008x4096 (out x in), batch 1 (decode-like) and 64. Every candidate runs once per round,
round-robin, for ``--rounds`` rounds after a warm-up; the table reports the median and the speedup against fp32
and bf16 measured in the same run. quanta's int8 weight-only kernel is fast with bf16 activations, so the quanta
rows feed it bf16; rows on the reference path (dequantize, then matmul) are marked as such.

    python benchmarks/bench_linear.py            # full run
    python benchmarks/bench_linear.py --quick    # smoke run on a small layer
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta


def _candidates(out_f: int, in_f: int, batch: int) -> dict[str, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    layer = nn.Linear(in_f, out_f)
    x32 = torch.randn(batch, in_f)
    x16 = x32.to(torch.bfloat16)
    bf16 = nn.Linear(in_f, out_f).to(torch.bfloat16)
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in layer.state_dict().items()})
    w8 = quanta.quantize(nn.Sequential(nn.Linear(in_f, out_f)), "w8a16")[0]
    w8.load_state_dict({**w8.state_dict(), "bias": layer.bias.detach()})
    w4 = quanta.quantize(nn.Sequential(nn.Linear(in_f, out_f)), "w4a16-g128")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(layer), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        return {
            "fp32 F.linear": lambda: layer(x32),
            "bf16 F.linear": lambda: bf16(x16),
            "torch dynamic int8 (fp32 act)": lambda: dynamic(x32),
            f"quanta w8a16, {w8.kernel} (bf16 act)": lambda: w8(x16),
            f"quanta w4a16-g128, {w4.kernel} (bf16 act)": lambda: w4(x16),
        }


def _measure(cands: dict[str, Callable[[], torch.Tensor]], rounds: int, inner: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in cands}
    with torch.no_grad():
        for fn in cands.values():
            fn()
        for _ in range(rounds):
            for name, fn in cands.items():
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small shape, 2 rounds")
    args = parser.parse_args(argv)
    shapes = [(256, 256)] if args.quick else [(4096, 4096), (11008, 4096)]
    batches = [1] if args.quick else [1, 64]
    rounds = 2 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {rounds} interleaved rounds\n")
    print("| out x in | batch | candidate | ms | vs fp32 | vs bf16 |")
    print("|---|---:|---|---:|---:|---:|")
    for out_f, in_f in shapes:
        for batch in batches:
            median = _measure(_candidates(out_f, in_f, batch), rounds, inner=1 if args.quick else 5)
            fp32, bf16 = median["fp32 F.linear"], median["bf16 F.linear"]
            for name, t in median.items():
                print(f"| {out_f}x{in_f} | {batch} | {name} | {t * 1e3:.3f} | {fp32 / t:.2f}x | {bf16 / t:.2f}x |")
    print(f"\nCommand: python benchmarks/bench_linear.py{' --quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
