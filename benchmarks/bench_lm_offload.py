"""Peak memory of ``quanta quantize --offload`` under an address-space limit below the float model's size (issue 4).

1. A child process builds a random-initialised Llama from a config (default: hidden 2048, MLP 5632, 24 blocks,
   full multi-head attention, vocabulary 512 with stories260K's tokenizer: 4.6 GiB of float32 weights) and
   writes it with ``save_pretrained`` in 500 MB safetensors shards. Building it is not measured.
2. ``quanta quantize DIR -r w4a16-g128-gptq --calib tinystories --nsamples 4 --seqlen 128 --offload`` runs in a
   child whose address space (``RLIMIT_AS``: every mapping, so also what RSS could ever reach) is capped at
   ``--limit-gb`` (default 3.0 GiB, well below the float model). It reports its own peak RSS (``ru_maxrss``).
3. The same command without ``--offload`` runs under the same cap, to show the cap bites: it must fail.

The table prints the float model's bytes, the cap, each run's exit status, peak RSS and time.

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


def _limited(limit_bytes: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def _quantize(source: Path, out: Path, calib: Path, offload: bool, limit_bytes: int) -> dict[str, object]:
    cli = str(Path(sys.executable).with_name("quanta"))
    args = [
        cli, "quantize", str(source), "-r", "w4a16-g128-gptq", "--calib", str(calib), "--nsamples", "4",
        "--seqlen", "128", "-o", str(out), "--overwrite", "--json", "--quiet",
    ]  # fmt: skip
    if offload:
        args.append("--offload")
    start = time.perf_counter()
    # glibc reserves 64 MB of address space per thread arena: two arenas keep that reservation from eating the cap
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, preexec_fn=_limited(limit_bytes))
    seconds = time.perf_counter() - start
    row: dict[str, object] = {"offload": offload, "rc": done.returncode, "seconds": seconds}
    if done.returncode == 0:
        report = json.loads(done.stdout)  # the run reports its own peak RSS
        row.update(peak_rss_bytes=report["peak_rss_bytes"], nbytes=report["nbytes"])
    else:
        row.update(error=(done.stderr.strip().splitlines() or ["?"])[-1][:100])
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
        rows = [_quantize(source, work / "q", calib, offload, limit) for offload in (True, False)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"random Llama: {args.layers} blocks, hidden {args.hidden}, MLP {args.mlp}: {float_bytes / 2**30:.2f} GiB")
    print(f"address-space cap (RLIMIT_AS) for each quantize run: {limit / 2**30:.2f} GiB")
    print(f"{'run':<18} {'exit':>5} {'peak RSS GiB':>13} {'RSS / float':>12} {'seconds':>8}  result")
    for row in rows:
        name = "--offload" if row["offload"] else "in memory"
        if row["rc"] == 0:
            rss, nbytes = int(str(row["peak_rss_bytes"])), int(str(row["nbytes"]))
            numbers = f"{rss / 2**30:>13.2f} {rss / float_bytes:>12.2f}"
            result = f"wrote {nbytes / 2**20:.0f} MiB"
        else:
            numbers, result = f"{'-':>13} {'-':>12}", f"failed: {row['error']}"
        print(f"{name:<18} {row['rc']:>5} {numbers} {float(str(row['seconds'])):>8.1f}  {result}")


if __name__ == "__main__":
    main()
