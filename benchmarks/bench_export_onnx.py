"""Latency of exported ONNX QDQ graphs in ONNX Runtime vs the same quantized model in quanta, and vs float torch.

Models: the demo CNN (random init, 64 digit-sized images), ResNet-20 (../shared/data weights, batch 32 CIFAR
images) and stories260K (a 260K-parameter Llama, 1 x 64 tokens). Recipes: w8a16, w8a8 (static), w4a16-g32,
w4a16-g128. One intra-op thread everywhere. Candidates run in interleaved rounds (one call each per round, so
machine noise hits them alike); the table gives median milliseconds and the ratio to quanta's in the same run.

``ort`` is ONNX Runtime's default session: it fuses DequantizeLinear -> MatMul into MatMulNBits and quantizes that
MatMul's activations to int8 (accuracy level 4), so it computes something other than the graph says; ``ort exact``
asks for fp32 activations (accuracy level 1) and matches quanta to fp32 rounding. ``max|diff|`` is each session's
largest output difference from quanta's reference path.

    python benchmarks/bench_export_onnx.py [--data ../shared/data] [--rounds 20] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.demo import DigitsCNN
from quanta.export import export
from quanta.export.onnx_check import onnxruntime_session, reference_outputs, run_onnxruntime

RECIPES = ("w8a16", "w8a8", "w4a16-g32", "w4a16-g128")


def _interleaved(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for fn in candidates.values():
        fn()  # warm-up: kernels pack, sessions allocate
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _caller(runner: nn.Module | object, inputs: tuple[torch.Tensor, ...], hf: bool) -> Callable[[], object]:
    """One forward pass of a torch model, or one run of an ONNX Runtime session, on ``inputs``."""
    if not isinstance(runner, nn.Module):
        return lambda: run_onnxruntime(runner, inputs)

    def run() -> object:
        with torch.no_grad():
            return runner(input_ids=inputs[0], use_cache=False) if hf else runner(*inputs)

    return run


def _models(data: Path, quick: bool) -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...], list[torch.Tensor], bool]]:
    torch.manual_seed(0)
    models = [("demo CNN", DigitsCNN().eval(), (torch.rand(64, 1, 8, 8),), [torch.rand(64, 1, 8, 8)], False)]
    if quick:
        return models
    resnet = data / "resnet_cifar10" / "resnet20-12fca82f.th"
    if resnet.is_file():
        from quanta.zoo import cifar10_sample, load_pretrained

        cifar = cifar10_sample(data / "cifar10_sample")
        net = load_pretrained("resnet20", resnet)
        models.append(("ResNet-20", net, (cifar["x_test"][:32],), [cifar["x_train"][:128]], False))
    stories = data / "stories260K_hf"
    if stories.is_dir():
        from quanta.lm.hf import load_hf

        lm = load_hf(stories)[0].eval()
        ids = torch.randint(3, 512, (1, 64), generator=torch.Generator().manual_seed(0))
        models.append(("stories260K", lm, (ids,), [ids], True))
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="the demo CNN only, 3 rounds (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds = 3 if args.quick else args.rounds
    warnings.simplefilter("ignore")
    print(
        "| model | recipe | float ms | quanta ms | ort ms | ort exact ms | ort / quanta | exact / quanta "
        "| max|diff| ort | max|diff| exact | onnx bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, inputs, calib, hf in _models(args.data, args.quick):
            for recipe in RECIPES:
                q = quanta.quantize(copy.deepcopy(model), recipe, calib=calib)
                path = Path(tmp) / "m.onnx"
                result = export(q, "onnx", path, tuple(x[:1] for x in inputs))
                fast, exact = onnxruntime_session(path, exact=False), onnxruntime_session(path, exact=True)
                ref = reference_outputs(q, inputs, hf=hf)
                ms = _interleaved(
                    {
                        "float": _caller(model, inputs, hf),
                        "quanta": _caller(q, inputs, hf),
                        "ort": _caller(fast, inputs, hf),
                        "exact": _caller(exact, inputs, hf),
                    },
                    rounds,
                )
                d_fast = float(np.abs(run_onnxruntime(fast, inputs) - ref).max())
                d_exact = float(np.abs(run_onnxruntime(exact, inputs) - ref).max())
                print(
                    f"| {name} | {recipe} | {ms['float']:.2f} | {ms['quanta']:.2f} | {ms['ort']:.2f} | "
                    f"{ms['exact']:.2f} | {ms['ort'] / ms['quanta']:.2f} | {ms['exact'] / ms['quanta']:.2f} | "
                    f"{d_fast:.2g} | {d_exact:.2g} | {result.nbytes:,} |"
                )
    print(f"\nCommand: python benchmarks/bench_export_onnx.py --rounds {rounds}{' --quick' if args.quick else ''}")
    print("1 intra-op thread; medians of interleaved rounds; ratios < 1: ONNX Runtime is faster than quanta.")


if __name__ == "__main__":
    main()
