"""Peak memory of ``quanta quantize --offload`` under an address-space limit below the float model's size (issue 4).

1. A child process builds a random-initialised Llama from a config (default: hidden 2048, MLP 5632, 24 blocks,
   full multi-head attention, vocabulary 512 with stories260K's tokenizer: 4.6 GiB of float32 weights) and
   writes it with ``save_pretrained`` in 500 MB safetensors shards. Building it is not measured.
2. ``quanta quantize DIR -r w4a16-g128-gptq --calib tinystories --nsamples 4 --seqlen 128 --offload`` runs in a
   child whose address space (``RLIMIT_AS``: every mapping, so also what RSS could ever reach) is capped at
   ``--limit-gb`` (default 3.0 GiB, well below the float model). It reports its own peak RSS (``ru_maxrss``).
3. The same command without ``--offload`` runs under the same cap, to show the cap bites: it must fail.

The cap covers a fixed baseline that does not grow with the model: the interpreter with torch, transformers and
quanta imported (printed above the table: ~0.7 GiB of address space, mostly shared libraries, ~0.25 GiB RSS) and
one block's working set (its float weights, and GPTQ's float64 Hessians and inverse Cholesky factors: ~1.3 GiB for a
2048-wide block). The table prints the float model's bytes, the cap, each run's exit status, peak RSS, peak
address space (``VmPeak``, what the cap limits) and time.

    .venv/bin/python benchmarks/bench_lm_offload.py [--data ../shared/data] [--layers 24] [--limit-gb 3.0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

_BUILD = r"""
import sys, torch, transformers
directory, layers, hidden, mlp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=mlp,
    num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
    max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
with torch.no_grad():
    model = transformers.LlamaForCausalLM(config).eval()
    for p in model.parameters():  # small weights keep the random model's activations in range
        p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
model.save_pretrained(directory, max_shard_size="500MB")
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""
VM_PEAK = "quanta-bench-vm-peak"  # the stderr line on which _RUN reports VmPeak
# ``quanta`` itself, reporting the kernel's peak of its address space (VmPeak: what RLIMIT_AS caps) on exit, also
# when it fails; with no arguments, that of the imports alone (and their peak RSS on stdout).
_RUN = r"""
import atexit, sys
def vm_peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmPeak:"))
    print("quanta-bench-vm-peak", kib * 1024, file=sys.stderr)
atexit.register(vm_peak)
import torch, transformers
from quanta.cli import app
if len(sys.argv) > 1:
    sys.argv[0] = "quanta"
    app()
else:
    import resource
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _limited(limit_bytes: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def _vm_peak(stderr: str) -> tuple[int | None, list[str]]:
    """The VmPeak that ``_RUN`` reported, and the other lines of its stderr."""
    lines = stderr.strip().splitlines()
    peaks = [int(line.split()[1]) for line in lines if line.startswith(VM_PEAK)]
    return (peaks[-1] if peaks else None), [line for line in lines if not line.startswith(VM_PEAK)]


def _run_quanta(args: list[str], limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    # glibc reserves 64 MB of address space per thread arena: two arenas keep that reservation from eating the cap
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    limit = None if limit_bytes is None else _limited(limit_bytes)
    return subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, env=env, preexec_fn=limit
    )


def _baseline() -> tuple[int, int | None]:
    """Peak RSS and address space of the interpreter with torch, transformers and quanta imported."""
    done = _run_quanta([])
    if done.returncode != 0:
        raise RuntimeError(f"importing torch, transformers and quanta failed: {done.stderr.strip()[-300:]}")
    return int(done.stdout.strip().splitlines()[-1]), _vm_peak(done.stderr)[0]


def _quantize(source: Path, out: Path, calib: Path, offload: bool, limit_bytes: int) -> dict[str, object]:
    args = [
        "quantize", str(source), "-r", "w4a16-g128-gptq", "--calib", str(calib), "--nsamples", "4",
        "--seqlen", "128", "-o", str(out), "--overwrite", "--json", "--quiet",
    ]  # fmt: skip
    if offload:
        args.append("--offload")
    start = time.perf_counter()
    done = _run_quanta(args, limit_bytes)
    seconds = time.perf_counter() - start
    vm_peak, stderr = _vm_peak(done.stderr)
    row: dict[str, object] = {"offload": offload, "rc": done.returncode, "seconds": seconds, "vm_peak": vm_peak}
    if done.returncode == 0:
        report = json.loads(done.stdout)  # the run reports its own peak RSS
        row.update(peak_rss_bytes=report["peak_rss_bytes"], nbytes=report["nbytes"])
    else:
        row.update(error=(stderr or ["?"])[-1][:100])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--mlp", type=int, default=5632)
    parser.add_argument("--limit-gb", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, default=None, help="Where the float model is written (temp dir).")
    args = parser.parse_args()
    stories = args.data / "stories260K_hf"
    calib = args.data / "tinystories_val" / "tinystories_val.txt"
    work = Path(tempfile.mkdtemp(prefix="quanta-offload-", dir=args.workdir))
    try:
        source = work / "float"
        built = subprocess.run(
            [sys.executable, "-c", _BUILD, str(source), str(args.layers), str(args.hidden), str(args.mlp)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        float_bytes = int(built.stdout.strip().splitlines()[-1])
        for name in TOKENIZER_FILES:
            shutil.copyfile(stories / name, source / name)
        limit = int(args.limit_gb * 2**30)
        base_rss, base_vm = _baseline()
        rows = [_quantize(source, work / "q", calib, offload, limit) for offload in (True, False)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"random Llama: {args.layers} blocks, hidden {args.hidden}, MLP {args.mlp}: {float_bytes / 2**30:.2f} GiB")
    print(f"address-space cap (RLIMIT_AS) for each quantize run: {limit / 2**30:.2f} GiB")
    print(f"imports alone (torch, transformers, quanta): address space {_gib(base_vm)} GiB, RSS {_gib(base_rss)} GiB")
    print(
        f"{'run':<10} {'exit':>5} {'peak RSS GiB':>13} {'RSS / float':>12} {'peak VM GiB':>12} {'seconds':>8}  result"
    )
    for row in rows:
        name = "--offload" if row["offload"] else "in memory"
        vm = _gib(row["vm_peak"])  # what the cap limits: reaching it is what makes an allocation fail
        if row["rc"] == 0:
            rss, nbytes = int(str(row["peak_rss_bytes"])), int(str(row["nbytes"]))
            numbers = f"{rss / 2**30:>13.2f} {rss / float_bytes:>12.2f} {vm:>12}"
            result = f"wrote {nbytes / 2**20:.0f} MiB"
        else:
            numbers, result = f"{'-':>13} {'-':>12} {vm:>12}", f"failed: {row['error']}"
        print(f"{name:<10} {row['rc']:>5} {numbers} {float(str(row['seconds'])):>8.1f}  {result}")


def _gib(nbytes: object) -> str:
    return "?" if nbytes is None else f"{int(str(nbytes)) / 2**30:.2f}"


if __name__ == "__main__":
    main()
