"""stories260K (Hugging Face Llama) perplexity vs bits per weight: vector codebooks (``vq{d}x{k}``, plain and
input-weighted ``-iw``,
GPTQ-style ``-gptvq``) against scalar int weights (RTN and GPTQ) at about 2, 3 and 4 bits per weight.

Protocol as benchmarks/bench_lm.py (issue 4): tinystories_val.txt tokenized whole, split at its middle token;
calibration takes 32 seeded windows of 256 tokens from the first half (used by ``-gptq`` and ``-iw``); perplexity
is measured on the second half over non-overlapping 256-token windows. Every nn.Linear of the decoder blocks is
quantized (embeddings and the tied lm_head stay float).

Bits per weight are counted honestly over the quantized layers: ``8 * (model_nbytes(quantized) -
model_nbytes(float) + 4 * n) / n`` for the ``n`` weights of those layers, so codes, codebooks, scales and zero
points all count. stories260K's layers are small (64 x 64 to 172 x 64), so a layer's own codebook is a large
overhead: a 256 x 4 fp16 codebook is 2 KiB, 4 bits a weight on a 64 x 64 layer.

    .venv/bin/python benchmarks/bench_vq_weights.py [--data ../shared/data] [--quick] [--presets a,b]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

import quanta
from quanta.eval import mean_nll
from quanta.lm import calibration_windows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lm import DATA, load_stories

PRESETS = (
    "w2a16",
    "w2a16-gptq",
    "w2a16-g16-gptq",
    "vq2x16",
    "vq2x16-iw",
    "vq2x16-gptvq",
    "vq4x16r2",
    "vq4x16r2-iw",
    "vq4x16r2-gptvq",
    "vq4x256",
    "vq4x256-iw",
    "vq4x256-gptvq",
    "vq4x256s",
    "vq4x256s-iw",
    "vq4x256s-gptvq",
    "w3a16",
    "w3a16-gptq",
    "w3a16-g16-gptq",
    "vq2x64",
    "vq2x64-iw",
    "vq2x64-gptvq",
    "vq2x64s-gptvq",
    "w4a16-gptq",
    "vq2x256-iw",
    "vq2x256-gptvq",
    "vq2x256s-gptvq",
)


def quantized_weights(model: torch.nn.Module) -> int:
    """Weights of the layers the presets quantize: every nn.Linear but the lm_head."""
    return sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--quick", action="store_true", help="4 calibration windows, 20,000 evaluation tokens")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, _, calib_ids, eval_ids = load_stories(args.data)
    if args.quick:
        eval_ids = eval_ids[:20_000]
    windows = calibration_windows(calib_ids, n=4 if args.quick else 32, length=256, seed=0)
    calib = list(windows.split(8))
    n = quantized_weights(model)
    float_bytes = quanta.model_nbytes(model)
    float_ppl = math.exp(mean_nll(model, eval_ids, 256, batch_size=64))
    print(f"stories260K_hf: {n:,} quantized weights; evaluation on {eval_ids.numel():,} tokens")
    print(f"{'model':<16} {'bits/weight':>11} {'ppl':>8} {'delta %':>8} {'quantize s':>11}")
    print(f"{'float32':<16} {32.0:>11.3f} {float_ppl:>8.4f} {0:>8.2f} {'':>11}")
    for preset in args.presets.split(","):
        start = time.perf_counter()
        quantized = quanta.quantize(copy.deepcopy(model), preset, calib)
        seconds = time.perf_counter() - start
        bits = 8 * (quanta.model_nbytes(quantized) - float_bytes + 4 * n) / n
        ppl = math.exp(mean_nll(quantized, eval_ids, 256, batch_size=64))
        print(f"{preset:<16} {bits:>11.3f} {ppl:>8.4f} {100 * (ppl / float_ppl - 1):>8.2f} {seconds:>11.1f}")
    print(
        "Command: .venv/bin/python benchmarks/bench_vq_weights.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
