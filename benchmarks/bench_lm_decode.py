"""Decode speed (tokens/s) and peak RSS of a language model, float vs quantized (issue 4).

Each case runs in a fresh Python process (so its peak RSS is its own): load the model, then greedy-generate
``--tokens`` tokens from a short prompt, batch 1, twice (the first run warms up; the second is timed). Cases:

- ``float32``: the float model as loaded; ``bf16``: the same model cast to bfloat16 (the activations torch's int4
  and int8 weight-only kernels are fast with);
- ``PRESET``: quantized with quanta (no calibration: data-free presets only) and saved by one process; the measuring
  process loads that directory with ``quanta.load`` (a meta skeleton: no float weights are materialised, so its RSS
  is the quantized model's), then casts it to bfloat16 so that layers the kernels take run on them
  (``int4_weight_only`` for ``w4a16-g128``; others on the reference path).

Two models: stories260K from ../shared/data (tiny: Python overhead dominates) and, with ``--synthetic``, a random
Llama of about 110M parameters built from a config (hidden 1024, 8 layers, MLP 2816, vocabulary 32000), where the
weight bytes dominate as in real LLM decoding.

    .venv/bin/python benchmarks/bench_lm_decode.py [--data ../shared/data] [--synthetic] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = ("float32", "bf16", "w8a16", "w4a16-g128")

_CHILD = r"""
import json, resource, sys, time, torch
import quanta
from quanta.lm import load_hf
source, case, tokens, saved = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if saved != "-":
    model = quanta.load(saved)
elif source == "synthetic":
    import transformers
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
        num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512)
    model = transformers.LlamaForCausalLM(config).eval()
else:
    model, _ = load_hf(source)
loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if case not in ("float32", "bf16") and saved == "-":
    quanta.quantize(model, case)
    quanta.save(model, sys.argv[5], overwrite=True)
    sys.exit(0)
if case != "float32":
    model.to(torch.bfloat16)
kernels = sorted({getattr(m, "kernel", "") for m in model.modules()} - {""})
ids = torch.tensor([[1, 2, 3, 4]])
with torch.no_grad():
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    model.generate(ids, **kw)
    start = time.perf_counter()
    out = model.generate(ids, **kw)
    seconds = time.perf_counter() - start
print(json.dumps({"case": case, "tokens_per_s": (out.shape[1] - ids.shape[1]) / seconds,
    "model_nbytes": quanta.model_nbytes(model), "rss_after_load_mb": loaded_rss / 1024,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "kernels": kernels}))
"""


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False)


def _run(source: str, case: str, tokens: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        saved = "-"
        if case not in ("float32", "bf16"):  # quantize and save in one process, measure a fresh load in another
            prepared = _child(source, case, str(tokens), "-", str(Path(tmp) / "q"))
            if prepared.returncode != 0:
                return {"case": case, "error": prepared.stderr.strip().splitlines()[-1]}
            saved = str(Path(tmp) / "q")
        done = _child(source, case, str(tokens), saved)
        if done.returncode != 0:
            return {"case": case, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--synthetic", action="store_true", help="also the random 110M-parameter Llama")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    sources = [("stories260K", str(args.data / "stories260K_hf"))]
    if args.synthetic:
        sources.append(("random Llama 110M", "synthetic"))
    print("| model | case | tokens/s | vs float32 | model bytes | RSS after load MB | peak RSS MB | kernels |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for title, source in sources:
        base = None
        for case in CASES:
            r = _run(source, case, args.tokens)
            if "error" in r:
                print(f"| {title} | {case} | failed: {r['error']} | | | | | |")
                continue
            speed = float(r["tokens_per_s"])  # type: ignore[arg-type]
            base = speed if case == "float32" else base
            ratio = f"{speed / base:.2f}x" if base else ""
            print(
                f"| {title} | {case} | {speed:.1f} | {ratio} | {int(r['model_nbytes']):,} | "  # type: ignore[call-overload]
                f"{float(r['rss_after_load_mb']):.0f} | {float(r['peak_rss_mb']):.0f} | "  # type: ignore[arg-type]
                f"{', '.join(r['kernels']) or '-'} |"  # type: ignore[arg-type]
            )
    print(
        "Command: .venv/bin/python benchmarks/bench_lm_decode.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )


if __name__ == "__main__":
    main()
