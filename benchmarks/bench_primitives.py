"""Throughput of quanta's tensor primitives, beside torch's own quantize ops, in one run.

For each scheme it times, on one seeded ``size x size`` fp32 tensor:

* ``quantize``: ``quanta.quantize_tensor`` (validate + fit + encode + pack);
* ``dequantize``: ``quanta.dequantize`` (unpack + decode);
* ``pack`` / ``unpack``: ``quanta.primitives.pack`` / ``unpack`` alone, on that scheme's integer codes;
* ``fake-quant``: ``quanta.fake_quantize`` (fit + encode + decode + the straight-through mask, forward only);

and, in the same rounds, torch's ops where they exist: per-channel and per-tensor fake-quant, quantize and
dequantize (int8 / uint8), and a scaled float8_e4m3fn cast. Every torch row includes the range computation
("observer") that gives the same scale as the matching quanta scheme, so both sides do the same work, and its
result is compared with quanta's (max |difference|).

Timing on a noisy machine: every operation runs once per round, round-robin, for ``--rounds`` rounds after one
untimed warm-up pass; each time reported is the median over the rounds. GB/s is always the fp32 input's bytes
(``size * size * 4``) divided by that median, so every column reads as "tensors of this size per second".

Run ``python benchmarks/bench_primitives.py --help`` for the options; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

# Measure the checkout this file lives in, whether or not quanta is installed in the environment.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import quanta  # noqa: E402
from quanta.primitives import pack, unpack  # noqa: E402

# One scheme per format family, per-channel or in groups where the family is usually used that way, plus
# uint8:tensor:asym and fp8_e4m3 (per-tensor) so that torch's per-tensor ops have a matching row.
DEFAULT_FORMATS = (
    "int8:ch",
    "uint8:tensor:asym",
    "int4:g128:asym",
    "nf4:g64",
    "fp8_e4m3",
    "fp4_e2m1:g32",
    "q4.4",
    "binary:ch",
    "ternary:ch",
    "pot4:ch",
    "lloyd3:ch",
)
OPS = ("quantize", "dequantize", "pack", "unpack", "fake-quant")
QUICK_SIZE = 256
SEED = 0


@dataclass
class TorchOp:
    """One of torch's own ops and the quanta measurement it is compared with."""

    name: str
    scheme: str  # the quanta row it matches (canonical scheme string)
    op: str  # the quanta column it matches
    run: Callable[[], object]  # the timed call
    result: Callable[[], torch.Tensor]  # its fp32 reconstruction, compared with quanta's


def torch_ops(x: torch.Tensor) -> list[TorchOp]:
    """torch's quantize / fake-quantize / float8 ops on ``x`` (rows = output channels), each with its observer."""

    def int8_channel_qparams() -> tuple[torch.Tensor, torch.Tensor]:
        # quanta's symmetric scale: the smallest that does not clip, max(min(x,0) / -128, max(x,0) / 127).
        lo, hi = torch.aminmax(x, dim=1)  # (rows,)
        scale = torch.maximum(lo.clamp(max=0) / -128, hi.clamp(min=0) / 127)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale, dtype=torch.int32)

    def uint8_tensor_qparams() -> tuple[torch.Tensor, torch.Tensor]:
        # Affine over [min(x, 0), max(x, 0)] with an integer zero point, as torch's MinMaxObserver.
        lo, hi = torch.aminmax(x)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / 255
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = (-torch.round(lo / scale)).clamp(0, 255).to(torch.int32)
        return scale, zero

    def fp8_quantize() -> tuple[torch.Tensor, torch.Tensor]:
        scale = x.abs().amax() / 448.0  # e4m3fn's largest finite value
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (x * (1.0 / scale)).to(torch.float8_e4m3fn), scale

    def int8_quantize() -> torch.Tensor:
        scale, zero = int8_channel_qparams()
        return torch.quantize_per_channel(x, scale, zero, 0, torch.qint8)

    def uint8_quantize() -> torch.Tensor:
        scale, zero = uint8_tensor_qparams()
        return torch.quantize_per_tensor(x, scale, zero, torch.quint8)

    def int8_fake() -> torch.Tensor:
        scale, zero = int8_channel_qparams()
        return torch.fake_quantize_per_channel_affine(x, scale, zero, 0, -128, 127)

    def uint8_fake() -> torch.Tensor:
        scale, zero = uint8_tensor_qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)

    def fp8_fake() -> torch.Tensor:
        q, scale = fp8_quantize()
        return q.float() * scale

    q_int8, q_uint8, (q_fp8, fp8_scale) = int8_quantize(), uint8_quantize(), fp8_quantize()
    dq_uint8 = q_uint8.dequantize
    return [
        TorchOp("quantize_per_channel qint8", "int8:ch", "quantize", int8_quantize, lambda: q_int8.dequantize()),
        TorchOp("dequantize (qint8 per-channel)", "int8:ch", "dequantize", q_int8.dequantize, q_int8.dequantize),
        TorchOp("fake_quantize_per_channel_affine", "int8:ch", "fake-quant", int8_fake, int8_fake),
        TorchOp("quantize_per_tensor quint8", "uint8:tensor:asym", "quantize", uint8_quantize, q_uint8.dequantize),
        TorchOp("dequantize (quint8 per-tensor)", "uint8:tensor:asym", "dequantize", dq_uint8, dq_uint8),
        TorchOp("fake_quantize_per_tensor_affine", "uint8:tensor:asym", "fake-quant", uint8_fake, uint8_fake),
        TorchOp("float8_e4m3fn cast, per-tensor scale", "fp8_e4m3", "quantize", fp8_quantize, fp8_fake),
        TorchOp("float8_e4m3fn -> fp32 * scale", "fp8_e4m3", "dequantize", lambda: q_fp8.float() * fp8_scale, fp8_fake),
        TorchOp("float8_e4m3fn round trip", "fp8_e4m3", "fake-quant", fp8_fake, fp8_fake),
    ]


@dataclass
class SchemeRow:
    """What one scheme stores and how well: measured once, outside the timed rounds."""

    scheme: str
    bits_per_value: float
    sqnr_db: float
    reconstruction: torch.Tensor


def scheme_tasks(x: torch.Tensor, scheme: str) -> tuple[SchemeRow, dict[str, Callable[[], object]]]:
    """The untimed set-up of one scheme (also the warm-up) and its timed operations by name."""
    qt = quanta.quantize_tensor(x, scheme)
    bits, signed, count = qt.scheme.bits, qt.scheme.fmt.signed_codes, qt.numel
    codes = qt.unpacked_codes()  # int32 (rows, cols)
    if not torch.equal(pack(codes, bits, signed), qt.codes):
        raise RuntimeError(f"{scheme}: pack(unpacked_codes()) does not reproduce the stored codes.")
    reconstruction = quanta.dequantize(qt)
    row = SchemeRow(str(qt.scheme), qt.bits_per_value, quanta.metrics.sqnr_db(x, reconstruction), reconstruction)
    tasks: dict[str, Callable[[], object]] = {
        "quantize": lambda: quanta.quantize_tensor(x, scheme),
        "dequantize": lambda: quanta.dequantize(qt),
        "pack": lambda: pack(codes, bits, signed),
        "unpack": lambda: unpack(qt.codes, bits, count, signed),
        "fake-quant": lambda: quanta.fake_quantize(x, scheme),
    }
    return row, tasks


def measure(tasks: dict[tuple[str, str], Callable[[], object]], rounds: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of every task, ``rounds`` times, round-robin over the tasks within each round."""
    times: dict[tuple[str, str], list[float]] = {key: [] for key in tasks}
    for r in range(rounds):
        start = time.perf_counter()
        for key, fn in tasks.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{rounds}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return times


def print_table(console: Console, table: Table) -> None:
    """Print a table as markdown that pastes as is into BENCHMARKS.md (right-aligned columns marked ``---:``)."""
    with console.capture() as captured:
        console.print(table)
    lines = [line.rstrip() for line in captured.get().splitlines() if line.strip()]
    # rich's MARKDOWN box draws the header rule without alignment marks; add them.
    widths = [len(cell) for cell in lines[1].strip("|").split("|")]
    marks = ["-" * (w - 1) + (":" if c.justify == "right" else "-") for w, c in zip(widths, table.columns, strict=True)]
    lines[1] = "|" + "|".join(marks) + "|"
    print("\n".join(lines))


def fmt_rate(gbps: float) -> str:
    return f"{gbps:.3g}"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "quanta"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown revision"
    if rev.returncode != 0:
        return "unknown revision"
    return rev.stdout.strip() + (" + local changes in quanta/" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def command_line() -> str:
    exe = Path(sys.executable)
    if exe.is_relative_to(Path.cwd()):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *sys.argv])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="the tensor is SIZE x SIZE fp32 (default 4096)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds; the median is reported (default 5)")
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="comma-separated scheme strings (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: size {QUICK_SIZE}, 1 round (unless given)")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = QUICK_SIZE if args.quick else 4096
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.size < 1 or args.rounds < 1:
        parser.error("--size and --rounds must be positive")
    args.formats = [s.strip() for s in args.formats.split(",") if s.strip()]
    for scheme in args.formats:
        try:
            quanta.QScheme.parse(scheme)
        except quanta.errors.QuantaError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
    console = Console(width=max(Console().width, 150), highlight=False, soft_wrap=True)
    size, rounds = args.size, args.rounds
    gigabytes = size * size * 4 / 1e9
    load_start = os.getloadavg()[0]

    x = torch.randn(size, size, generator=torch.Generator().manual_seed(SEED))
    rows: dict[str, SchemeRow] = {}
    tasks: dict[tuple[str, str], Callable[[], object]] = {}
    print("untimed warm-up pass (also computes bits/value and SQNR) ...", file=sys.stderr, flush=True)
    for scheme in args.formats:
        row, ops = scheme_tasks(x, scheme)
        rows[row.scheme] = row
        tasks.update({(row.scheme, op): fn for op, fn in ops.items()})
    reference = torch_ops(x)
    for t in reference:
        t.run()
        tasks[("torch", t.name)] = t.run

    times = measure(tasks, rounds)
    median = {key: statistics.median(v) for key, v in times.items()}
    rate = {key: gigabytes / s for key, s in median.items()}
    load_end = os.getloadavg()[0]

    console.print(
        f"quanta primitives: {size}x{size} fp32 ({gigabytes * 1e3:.1f} MB), seed {SEED}, randn input\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()} ({os.cpu_count()} CPUs), "
        f"quanta {quanta.__version__} at {git_revision()}\n"
        f"Each time is the median of {rounds} interleaved rounds (every operation once per round, round-robin, "
        f"after an untimed warm-up). GB/s = fp32 input bytes ({gigabytes:.4f} GB) / median seconds, for every "
        f"column. Load average at start / end: {load_start:.2f} / {load_end:.2f}.\n"
    )
    table = Table(box=box.MARKDOWN, pad_edge=False)
    table.add_column("scheme")
    table.add_column("bits/value", justify="right")
    table.add_column("SQNR dB", justify="right")
    for op in OPS:
        table.add_column(f"{op} GB/s", justify="right")
    for name, row in rows.items():
        cells = [fmt_rate(rate[(name, op)]) for op in OPS]
        table.add_row(name, f"{row.bits_per_value:.3f}", f"{row.sqnr_db:.2f}", *cells)
    print_table(console, table)

    console.print(
        "\ntorch's own ops in the same rounds (each includes the observer that gives quanta's scale); "
        "'time ratio' = quanta median time / torch median time (above 1: quanta is slower); "
        "'max abs diff' = largest difference between the two fp32 reconstructions.\n"
    )
    peers = Table(box=box.MARKDOWN, pad_edge=False)
    for column in ("torch op", "torch GB/s", "quanta row", "quanta GB/s", "time ratio", "max abs diff"):
        peers.add_column(column, justify="left" if column in ("torch op", "quanta row") else "right")
    for t in reference:
        torch_rate = rate[("torch", t.name)]
        key = (t.scheme, t.op)
        if key in rate:
            diff = float((t.result().float() - rows[t.scheme].reconstruction).abs().max())
            cells = [f"{t.scheme} {t.op}", fmt_rate(rate[key]), f"{median[key] / median[('torch', t.name)]:.2f}"]
            cells.append(f"{diff:.3g}")
        else:
            cells = [f"{t.scheme} {t.op} (not run)", "-", "-", "-"]
        peers.add_row(t.name, fmt_rate(torch_rate), *cells)
    print_table(console, peers)

    if rounds > 1:
        spread = {key: max(v) / min(v) for key, v in times.items()}
        worst = max(spread, key=lambda k: spread[k])
        console.print(
            f"\nRound-to-round spread (slowest / fastest round) per measurement: median "
            f"{statistics.median(spread.values()):.2f}x, worst {spread[worst]:.2f}x ({' '.join(worst)})."
        )
    else:
        console.print("\nOne round only: no spread to report; use --rounds 5 or more for numbers to keep.")
    console.print(f"Command: {command_line()}")


if __name__ == "__main__":
    main()
