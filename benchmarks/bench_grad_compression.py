"""Gradient compression on 2 gloo processes: LeNet-5 trained from scratch on MNIST with float, int8 and sign
gradients exchanged through DistributedDataParallel (issue 5).

Each of the 2 ranks (separate processes, one thread each) trains on its own half of the first 8,000 MNIST test
images (../shared/data/mnist_test), SGD with momentum 0.9, lr 0.05, batch 64 per rank, ``--epochs`` passes; the
accuracy is on the other 2,000 images. Bytes are what each rank handed to the collectives per step
(``quanta.grad_compression`` stats; float gradients are all-reduced by DDP itself: 4 bytes per value). Step time is
the median over the run of forward + backward (including the exchange) + optimizer step.

    .venv/bin/python benchmarks/bench_grad_compression.py [--data ../shared/data] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quanta.grad_compression import register
from quanta.zoo import build, mnist_test

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CODECS = ("float", "int8", "sign")


def _worker(
    rank: int, store: str, data: Path, epochs: int, out: Path, codecs: list[str], lr: float, momentum: float
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, y = mnist_test(data / "mnist_test")
    mine = torch.arange(rank, 8000, 2)
    results = {}
    for codec in codecs:
        torch.manual_seed(0)
        model = build("lenet5")
        ddp = DistributedDataParallel(model)
        state = None if codec == "float" else register(ddp, codec)  # type: ignore[arg-type]
        opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
        g = torch.Generator().manual_seed(rank)
        times = []
        for _ in range(epochs):
            order = mine[torch.randperm(len(mine), generator=g)]
            for i in range(0, len(order) - 63, 64):
                batch = order[i : i + 64]
                start = time.perf_counter()
                loss = nn.functional.nll_loss(ddp(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x[8000:]).argmax(1) == y[8000:]).float().mean())
        values = sum(p.numel() for p in model.parameters())
        sent = 4 * values if state is None else state.stats.sent_bytes / len(times)
        results[codec] = {"accuracy": accuracy, "bytes": sent, "step_ms": 1e3 * statistics.median(times)}
    dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        codecs = args.codecs.split(",")
        _worker(args.worker, args.store, args.data, args.epochs, args.out, codecs, args.lr, args.momentum)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        common = ["--data", str(args.data), "--epochs", str(args.epochs), "--store", str(Path(tmp) / "store")]
        common += ["--codecs", args.codecs, "--lr", str(args.lr), "--momentum", str(args.momentum)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        procs = [
            subprocess.Popen([sys.executable, __file__, *common, "--worker", str(r), "--out", str(out)], env=env)
            for r in range(2)
        ]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a worker failed (see its output above)")
        results = json.loads(out.read_text())
    codecs = args.codecs.split(",")
    base = results[codecs[0]]
    print(f"LeNet-5, 2 gloo ranks x 4,000 MNIST images, {args.epochs} epochs; accuracy on the 2,000 held-out images")
    print("| gradients | accuracy % | bytes sent / step / rank | vs first | step ms | vs first |")
    print("|---|---:|---:|---:|---:|---:|")
    for codec in codecs:
        r = results[codec]
        print(
            f"| {codec} | {100 * r['accuracy']:.2f} | {r['bytes']:,.0f} | {r['bytes'] / base['bytes']:.3f}x | "
            f"{r['step_ms']:.1f} | {r['step_ms'] / base['step_ms']:.2f}x |"
        )
    print(f"SGD lr {args.lr}, momentum {args.momentum}")
    print(
        f"Command: .venv/bin/python benchmarks/bench_grad_compression.py --epochs {args.epochs} --codecs {args.codecs}"
        f" --lr {args.lr} --momentum {args.momentum}"
    )


if __name__ == "__main__":
    main()
