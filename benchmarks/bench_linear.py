"""Latency of one quantized linear layer: quanta's kernels beside fp32, bf16, torch's dynamic int8 and peer tools.

Shapes 4096x4096 and 11008x4096 (out x in), batch 1 (decode-like) and 64. Every candidate runs once per round,
round-robin, for ``--rounds`` rounds after a warm-up; the table reports the median and the speedup against fp32
and bf16 measured in the same run. Each row names the activation dtype it is fed: the weight-only kernels are fast
with bf16 activations, the W8A8 kernel takes fp32 (or bf16). Peer rows (torchao, optimum-quanto; the optional
``peers`` extra) appear when those packages import; a peer that fails is listed below the table with its error.

A second table times vector-codebook weights (``vq...`` presets, kernel ``vq_lut``) at batch 1 on shapes of small
LLMs: fp32 and bf16 ``F.linear`` on the float weight, quanta's reference path (``QTensor.dequantize`` then
``F.linear``), a fast dequantization (one byte-table gather, then ``F.linear``: the kernel's path for larger
batches) and the lookup kernel; "vs dequant" is the fast dequantization's time over the row's.

    python benchmarks/bench_linear.py            # full run
    python benchmarks/bench_linear.py --quick    # smoke run on a small layer, no peers
    python benchmarks/bench_linear.py --threads 1  # steadier on a shared machine
    python benchmarks/bench_linear.py --vq-only --threads 1  # only the vector-codebook table
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.kernels.vq_lut import dequantize_bytes, lut_linear

Candidates = dict[str, Callable[[], torch.Tensor]]
FP32, BF16 = "fp32 F.linear", "bf16 F.linear"


def _quanta(layer: nn.Linear, preset: str, calib: torch.Tensor) -> nn.Module:
    packed = quanta.quantize(nn.Sequential(copy.deepcopy(layer)), preset, calib=[calib] if preset == "w8a8" else None)
    return packed[0]


def _quanta_rows(layer: nn.Linear, x32: torch.Tensor, x16: torch.Tensor) -> Candidates:
    calib = torch.randn(64, layer.in_features, generator=torch.Generator().manual_seed(1))
    w8 = _quanta(layer, "w8a16", calib)
    w4 = _quanta(layer, "w4a16-g128", calib)
    a8 = _quanta(layer, "w8a8", calib)
    dyn = _quanta(layer, "w8a8-dyn", calib)
    return {
        f"quanta w8a16, {w8.kernel} (bf16 act)": lambda: w8(x16),
        f"quanta w4a16-g128, {w4.kernel} (bf16 act)": lambda: w4(x16),
        f"quanta w8a8, {a8.kernel} (fp32 act)": lambda: a8(x32),
        f"quanta w8a8-dyn, {dyn.kernel} (fp32 act)": lambda: dyn(x32),
        f"quanta w8a8-dyn, {dyn.kernel} (bf16 act)": lambda: dyn(x16),
    }


def _peer_rows(layer: nn.Linear, x32: torch.Tensor, x16: torch.Tensor, failures: dict[str, str]) -> Candidates:
    rows: Candidates = {}

    def attempt(name: str, build: Callable[[], Callable[[], torch.Tensor]]) -> None:
        try:
            fn = build()
            with torch.no_grad():
                fn()
            rows[name] = fn
        except Exception as exc:  # a peer that is missing or fails here is reported, not fatal
            failures[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"

    def torchao(config_name: str, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        import torchao.quantization as tq

        model = copy.deepcopy(layer).to(dtype)
        tq.quantize_(model, getattr(tq, config_name)())
        x = x16 if dtype == torch.bfloat16 else x32
        return lambda: model(x)

    def quanto(weights: str) -> Callable[[], torch.Tensor]:
        import optimum.quanto as oq

        model = nn.Sequential(copy.deepcopy(layer)).to(torch.bfloat16)  # quanto swaps children, not the root
        oq.quantize(model, weights=getattr(oq, weights))
        oq.freeze(model)
        return lambda: model(x16)

    attempt("torchao int8 weight-only (bf16 act)", lambda: torchao("Int8WeightOnlyConfig", torch.bfloat16))
    attempt("torchao int8 dynamic (fp32 act)", lambda: torchao("Int8DynamicActivationInt8WeightConfig", torch.float32))
    attempt("quanto qint8 weights (bf16 act)", lambda: quanto("qint8"))
    attempt("quanto qint4 weights (bf16 act)", lambda: quanto("qint4"))
    return rows


def _candidates(out_f: int, in_f: int, batch: int, peers: bool, failures: dict[str, str]) -> Candidates:
    torch.manual_seed(0)
    layer = nn.Linear(in_f, out_f)
    x32 = torch.randn(batch, in_f)
    x16 = x32.to(torch.bfloat16)
    bf16 = copy.deepcopy(layer).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(copy.deepcopy(layer)), {nn.Linear}, dtype=torch.qint8
        )
    rows: Candidates = {
        FP32: lambda: layer(x32),
        BF16: lambda: bf16(x16),
        "torch dynamic int8 (fp32 act)": lambda: dynamic(x32),
    }
    rows.update(_quanta_rows(layer, x32, x16))
    if peers:
        rows.update(_peer_rows(layer, x32, x16, failures))
    return rows


def _measure(cands: Candidates, rounds: int, inner: int, window: float = 0.0) -> dict[str, float]:
    """Median seconds per call over interleaved rounds. With ``window``, each candidate repeats in a round until
    about that many seconds pass (at least ``inner`` calls, counted from its warm-up call), so that a stall of the
    shared machine inflates a fast candidate's round by a fraction, not a multiple."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    repeats: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in cands.items():
            start = time.perf_counter()
            fn()
            repeats[name] = max(inner, int(window / max(time.perf_counter() - start, 1e-6)))
        for _ in range(rounds):
            for name, fn in cands.items():
                start = time.perf_counter()
                for _ in range(repeats[name]):
                    fn()
                times[name].append((time.perf_counter() - start) / repeats[name])
    return {k: statistics.median(v) for k, v in times.items()}


# (job, quanta row prefix, target vs fp32, peer row prefixes doing the same job), per batch size.
JOBS = {
    1: [
        ("int8 weight-only", "quanta w8a16", 4.0, ("torchao int8 weight-only", "quanto qint8")),
        ("int4 g128", "quanta w4a16-g128", 6.0, ("quanto qint4",)),
        ("W8A8 dynamic", "quanta w8a8-dyn", 0.0, ("torch dynamic int8", "torchao int8 dynamic")),
    ],
    64: [
        ("W8A8", "quanta w8a8", 5.0, ("torch dynamic int8", "torchao int8 dynamic")),
        ("W8A8 dynamic", "quanta w8a8-dyn", 5.0, ("torch dynamic int8", "torchao int8 dynamic")),
    ],
}


def _summary(results: dict[tuple[int, int, int], dict[str, float]]) -> list[str]:
    """The issue's targets, read off the table: speedup against fp32, and against the fastest peer on the job."""

    def fastest(median: dict[str, float], prefixes: tuple[str, ...]) -> tuple[str, float] | None:
        hits = [(k, v) for k, v in median.items() if k.startswith(prefixes)]
        return min(hits, key=lambda kv: kv[1]) if hits else None

    lines = []
    for (out_f, in_f, batch), median in results.items():
        for label, prefix, target, peer_prefixes in JOBS.get(batch, []):
            ours = fastest(median, (prefix + ",",))
            if ours is None:
                continue
            line = f"{out_f}x{in_f} batch {batch}: {label} {median[FP32] / ours[1]:.1f}x fp32"
            line += f" (target >= {target:.0f}x)" if target else ""
            peer = fastest(median, peer_prefixes)
            if peer is not None:
                line += f"; fastest peer ({peer[0]}): quanta at {peer[1] / ours[1]:.2f}x its speed"
            lines.append(line)
    return lines


VQ_SHAPES = [(768, 768), (2048, 2048), (5632, 2048), (4096, 4096)]
VQ_PRESETS = ["vq2x16", "vq4x256", "vq8x256", "vq4x16r2"]
VQ_BATCHES = {(2048, 2048): [4, 16, 64]}  # beyond batch 1: where the lookups stop paying (``LUT_MAX_ROWS``)
REFERENCE, DEQUANT, LUT = "reference: dequantize + F.linear", "fast dequantize + F.linear", "vq_lut lookups"


def _vq_candidates(layer: nn.Linear, packed: Any, preset: str, batch: int) -> Candidates:
    torch.manual_seed(2)
    x32 = torch.randn(batch, layer.in_features)
    x16 = x32.to(torch.bfloat16)
    bf16 = copy.deepcopy(layer).to(torch.bfloat16)
    bias: torch.Tensor = packed.bias  # nn.Linear's default: with a bias
    rows: Candidates = {FP32: lambda: layer(x32), BF16: lambda: bf16(x16)}
    if batch == 1:  # quanta's generic decoder is slow: timed at batch 1 only (its cost does not depend on it)
        rows[f"{REFERENCE} (fp32 act)"] = lambda: F.linear(x32, packed.dequantized_weight(torch.float32), bias)
    rows[f"{DEQUANT} (fp32 act)"] = lambda: F.linear(x32, dequantize_bytes(packed, torch.float32), bias)
    rows[f"{LUT} (fp32 act)"] = lambda: lut_linear(x32, packed).add(bias)
    rows[f"{LUT} (bf16 act)"] = lambda: lut_linear(x16, packed).add(bias).to(torch.bfloat16)
    rows[f"quanta {preset} module, {packed.kernel} (fp32 act)"] = lambda: packed(x32)
    return rows


def _vq_table(shapes: list[tuple[int, int]], presets: list[str], rounds: int, inner: int) -> None:
    print("\n| out x in | batch | format | candidate | ms | vs fp32 | vs bf16 | vs dequant |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    summary = []
    for out_f, in_f in shapes:
        torch.manual_seed(0)
        layer = nn.Linear(in_f, out_f)
        for preset in presets:
            packed = _quanta(layer, preset, torch.zeros(1, in_f))
            assert packed.kernel == "vq_lut", f"{preset} got kernel {packed.kernel}"
            for batch in [1, *VQ_BATCHES.get((out_f, in_f), [])]:
                median = _measure(_vq_candidates(layer, packed, preset, batch), rounds, inner, window=0.05)
                fp32, bf16, deq = median[FP32], median[BF16], median[f"{DEQUANT} (fp32 act)"]
                for name, t in median.items():
                    ratios = f"{fp32 / t:.2f}x | {bf16 / t:.2f}x | {deq / t:.2f}x"
                    print(f"| {out_f}x{in_f} | {batch} | {preset} | {name} | {t * 1e3:.3f} | {ratios} |")
                lut = median[f"{LUT} (fp32 act)"]
                line = f"{out_f}x{in_f} {preset} batch {batch}: lookups {deq / lut:.2f}x fast dequantize"
                ref = median.get(f"{REFERENCE} (fp32 act)")
                line += "" if ref is None else f", {ref / lut:.1f}x reference"
                summary.append(line + f", {fp32 / lut:.2f}x fp32 F.linear, {bf16 / lut:.2f}x bf16")
    print()
    for line in summary:
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small shape, 2 rounds, no peers")
    parser.add_argument("--no-peers", action="store_true", help="skip torchao / optimum-quanto rows")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--vq-only", action="store_true", help="only the vector-codebook (vq_lut) table")
    parser.add_argument("--vq-presets", default=",".join(VQ_PRESETS), help="comma-separated vq presets")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(256, 256)] if args.quick else [(4096, 4096), (11008, 4096)]
    batches = [1] if args.quick else [1, 64]
    rounds = 2 if args.quick else args.rounds
    peers = not (args.quick or args.no_peers)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {rounds} interleaved rounds\n")
    if not args.vq_only:
        _int_table(shapes, batches, rounds, 1 if args.quick else 5, peers)
    vq_shapes = [(256, 256)] if args.quick else VQ_SHAPES
    vq_presets = ["vq4x256"] if args.quick else args.vq_presets.split(",")
    _vq_table(vq_shapes, vq_presets, rounds, 1)
    flags = (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else "")
    flags += " --vq-only" if args.vq_only else ""
    flags += f" --vq-presets {args.vq_presets}" if args.vq_presets != ",".join(VQ_PRESETS) else ""
    print(f"\nCommand: python benchmarks/bench_linear.py{flags}")


def _int_table(shapes: list[tuple[int, int]], batches: list[int], rounds: int, inner: int, peers: bool) -> None:
    print("| out x in | batch | candidate | ms | vs fp32 | vs bf16 |")
    print("|---|---:|---|---:|---:|---:|")
    failures: dict[str, str] = {}
    results: dict[tuple[int, int, int], dict[str, float]] = {}
    for out_f, in_f in shapes:
        for batch in batches:
            cands = _candidates(out_f, in_f, batch, peers, failures)
            median = _measure(cands, rounds, inner)
            results[(out_f, in_f, batch)] = median
            fp32, bf16 = median[FP32], median[BF16]
            for name, t in median.items():
                print(f"| {out_f}x{in_f} | {batch} | {name} | {t * 1e3:.3f} | {fp32 / t:.2f}x | {bf16 / t:.2f}x |")
            del cands
    print()
    for line in _summary(results):
        print(line)
    for name, why in failures.items():
        print(f"peer row skipped: {name}: {why}")


if __name__ == "__main__":
    main()
