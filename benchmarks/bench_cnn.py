"""Accuracy, size and latency of real pretrained CNNs under quanta's presets (issue 3 targets).

LeNet-5 / MNIST: calibrate on the first 8,000 test images, evaluate on the last 2,000. ResNet-20 / CIFAR-10
sample: calibrate on the 400 train images, evaluate on the 150 test images. Latency in the accuracy table: one
forward pass of the whole evaluation batch, median of 5 rounds, fp32 inputs (modules with a kernel for their
scheme, e.g. w8a8 convolutions, take it; the rest the reference path): read speed from the latency table.

The latency table times the same batches (ResNet-20: 150 images, LeNet-5: 2,000) for float eager (fp32, and bf16
for fairness), quanta w8a8 through its kernels and through the reference path (``QUANTA_KERNEL=reference``),
quanta w8a8 with the int8 flow between its convolutions turned off (``quanta.nn.int8_flow.enable(model, False)``:
every conv returns float, and the model's ReLUs / residual adds run in fp32), quanta w8a8 with bf16 activations
(``model.to(torch.bfloat16)`` and a bf16 batch: the int8 conv kernel takes bf16 in and writes bf16 out, so the
float ops between convolutions move half the bytes), torch's FX int8 path
(``prepare_fx``/``convert_fx``, x86 backend, BatchNorm fused) and, when onnxruntime is installed, its static
uint8 QDQ model. Candidates run in interleaved rounds (one call each per round, so machine noise hits them
alike); the table gives the median and the best round and their ratios to fp32 float eager's. The accuracy
table adds w8a8 with bf16 activations (same model and calibration as w8a8, cast to bf16 after quantizing).

    python benchmarks/bench_cnn.py [--data ../shared/data] [--latency-only] [--rounds 15] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.eval import accuracy
from quanta.methods import fold_batchnorm
from quanta.nn import int8_flow
from quanta.zoo import cifar10_sample, load_pretrained, mnist_test

PRESETS = ("w8a16", "w8a8", "w8a8-dyn", "w4a16-g32", "w4a16-g32-adaround", "nf4-g64", "w3a16-g16", "ternary")


def _latency(model: torch.nn.Module, x: torch.Tensor, rounds: int = 5) -> float:
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate in every round; a round calls every candidate once."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.no_grad():
        for fn in candidates.values():
            fn()  # warm-up: first-call allocations, oneDNN primitive creation
        for _ in range(rounds):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def _reference_path(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        os.environ["QUANTA_KERNEL"] = "reference"
        try:
            return model(x)
        finally:
            del os.environ["QUANTA_KERNEL"]

    return run


def _torch_fx_int8(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torch's own static int8 path: FX graph mode, x86 backend (BatchNorm fused, ReLU/add fused in int8)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[:2],))
    with torch.no_grad():
        for batch in calib.split(500):
            prepared(batch)
    return convert_fx(prepared)


def _onnxruntime_qdq(model: nn.Module, calib: torch.Tensor, workdir: Path) -> Callable[[torch.Tensor], object] | None:
    """onnxruntime's static QDQ model (uint8 activations, int8 per-channel weights), or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return None
    float_path, q_path = workdir / "float.onnx", workdir / "qdq.onnx"
    torch.onnx.export(
        model, (calib[:2],), str(float_path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"x": b.numpy()} for b in calib.split(500)])

        def get_next(self) -> dict[str, object] | None:
            return next(self.batches, None)

    quantize_static(
        str(float_path),
        str(q_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(q_path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x.numpy()})


def _kernels(model: nn.Module) -> str:
    """The kernels a model's packed modules run on, and whether int8 activations flow between them."""
    names = ", ".join(sorted({str(getattr(m, "kernel", "")) for m in model.modules()} - {""}))
    return names + (" + int8 flow" if int8_flow.is_enabled(model) else "")


def _latency_candidates(
    name: str, path: Path, calib: torch.Tensor, x: torch.Tensor, workdir: Path
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """One model's contenders (callables on the batch ``x``) and the quanta kernels each quanta row uses."""
    float_model = load_pretrained(name, path).eval()
    folded = load_pretrained(name, path).eval()
    fold_batchnorm(folded, calib[:8])
    w8a8 = quanta.quantize(folded, "w8a8", calib=calib.split(500))
    unfolded = quanta.quantize(load_pretrained(name, path).eval(), "w8a8", calib=calib.split(500))
    fx = _torch_fx_int8(float_model, calib)
    bf16_model = copy.deepcopy(float_model).to(torch.bfloat16)
    w8a8_no_flow = int8_flow.enable(copy.deepcopy(w8a8), on=False)  # every conv returns float, as before the flow
    w8a8_bf16 = copy.deepcopy(w8a8).to(torch.bfloat16)  # codes, scales and activation params keep their dtypes
    x_bf16 = x.bfloat16()
    candidates: dict[str, Callable[[], object]] = {
        "float eager": functools.partial(float_model, x),
        "float eager, bf16": functools.partial(bf16_model, x_bf16),
        "quanta w8a8 (BN folded)": functools.partial(w8a8, x),
        "quanta w8a8 (BN folded), int8 flow off": functools.partial(w8a8_no_flow, x),
        "quanta w8a8 (BN folded), bf16 activations": functools.partial(w8a8_bf16, x_bf16),
        "quanta w8a8 (BN folded), reference path": _reference_path(w8a8, x),
        "quanta w8a8 (BN unfolded)": functools.partial(unfolded, x),
        "torch FX int8 (x86)": functools.partial(fx, x),
    }
    ort_run = _onnxruntime_qdq(float_model, calib, workdir)
    if ort_run is not None:
        candidates["onnxruntime QDQ uint8"] = functools.partial(ort_run, x)
    labels = {
        "quanta w8a8 (BN folded)": _kernels(w8a8),
        "quanta w8a8 (BN folded), int8 flow off": _kernels(w8a8_no_flow),
        "quanta w8a8 (BN folded), bf16 activations": _kernels(w8a8_bf16),
        "quanta w8a8 (BN unfolded)": _kernels(unfolded),
        "quanta w8a8 (BN folded), reference path": "reference",
    }
    return candidates, labels


def latency_table(cases: list[tuple[str, str, Path, torch.Tensor, torch.Tensor]], rounds: int) -> None:
    """Print float eager vs quanta w8a8 (kernels, reference path) vs torch FX int8 vs onnxruntime QDQ."""
    print(f"Latency, {torch.get_num_threads()} threads, {rounds} interleaved rounds:\n")
    print("| model | batch | path | quanta kernels | median ms | best ms | median vs float | best vs float |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    has_ort = False
    for title, name, path, calib, x in cases:
        with tempfile.TemporaryDirectory() as tmp:
            candidates, labels = _latency_candidates(name, path, calib, x, Path(tmp))
            times = _interleaved(candidates, rounds)
        has_ort = has_ort or "onnxruntime QDQ uint8" in times
        base_median, base_best = statistics.median(times["float eager"]), min(times["float eager"])
        for label, seconds in times.items():
            median, best = statistics.median(seconds), min(seconds)
            print(
                f"| {title} | {len(x):,} | {label} | {labels.get(label, '')} | {median * 1e3:.1f} | {best * 1e3:.1f} "
                f"| {median / base_median:.3f}x | {best / base_best:.3f}x |"
            )
    if not has_ort:
        print("(onnxruntime is not installed: no QDQ row)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--latency-only", action="store_true", help="skip the accuracy table")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the latency table")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
    latency_table([(title, name, path, calib, test[0]) for title, name, path, calib, test in cases], args.rounds)
    if args.latency_only:
        print(f"\nCommand: python benchmarks/bench_cnn.py --latency-only --rounds {args.rounds}")
        return
    print("\n| model | recipe | accuracy | vs float | bytes | x smaller | latency ms | vs float |")
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
            if preset == "w8a8":  # the same model with bf16 activations (the conv kernel: bf16 in, bf16 out)
                q.to(torch.bfloat16)
                test_bf16 = (test[0].bfloat16(), test[1])
                acc, ms = accuracy(q, test_bf16), _latency(q, test_bf16[0])
                print(
                    f"| {title} | w8a8, bf16 activations | {acc:.2%} | {100 * (acc - base_acc):+.2f} pt | "
                    f"{quanta.model_nbytes(q):,} | {base_bytes / quanta.model_nbytes(q):.1f}x | {ms * 1e3:.1f} | "
                    f"{base_ms / ms:.2f}x |"
                )
    print("\nCommand: python benchmarks/bench_cnn.py")


if __name__ == "__main__":
    main()
