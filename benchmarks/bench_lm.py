"""stories260K (Hugging Face Llama) perplexity: float vs W8A8 (plain, SmoothQuant) and weight-only presets at
W4 g32, W3 g16 and W2 g16 (RTN, GPTQ, AWQ, AWQ + GPTQ, HQQ, AdaRound).

Protocol (issue 4): tinystories_val.txt is tokenized whole without BOS and split at its middle token. Calibration
takes 32 seeded random windows of 256 tokens from the first half; perplexity is measured on the second half
(disjoint from calibration) over non-overlapping 256-token windows. Every nn.Linear in the decoder blocks is
quantized; the presets keep the (tied) embeddings and lm_head in float. Bytes are quanta.model_nbytes.

    .venv/bin/python benchmarks/bench_lm.py [--data ../shared/data] [--quick] [--presets a,b] [--sequential]
        [--shift wiki-to-stories | stories-to-wiki]
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

import quanta
from quanta.eval import mean_nll
from quanta.lm import calibration_windows, load_hf, quantize_sequential, tokenize_file

PRESETS = (
    "w8a16",
    "w8a8",
    "w8a8-smoothquant",
    *(
        f"w{bits}a16-g{group}{method}"
        for bits, group in ((4, 32), (3, 16), (2, 16))
        for method in ("", "-gptq", "-awq", "-awq_gptq", "-hqq", "-adaround")
    ),
)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_stories(data: Path) -> tuple[torch.nn.Module, Any, torch.Tensor, torch.Tensor]:
    """The protocol's model and text: stories260K_hf, its tokenizer, and tinystories_val's tokens split at the
    middle token into the calibration half and the (disjoint) evaluation half."""
    model, tokenizer = load_hf(data / "stories260K_hf")
    ids = tokenize_file(data / "tinystories_val" / "tinystories_val.txt", tokenizer)
    half = ids.numel() // 2
    return model, tokenizer, ids[:half], ids[half:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--quick", action="store_true", help="4 calibration windows, 20,000 evaluation tokens")
    parser.add_argument(
        "--shift",
        choices=("none", "wiki-to-stories", "stories-to-wiki"),
        default="none",
        help="calibration-domain shift: calibrate on wikitext2_test and evaluate on tinystories' second half, or "
        "calibrate on tinystories' first half and evaluate on wikitext2_test",
    )
    parser.add_argument("--sequential", action="store_true", help="quantize block by block (quantize_sequential)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer, calib_ids, eval_ids = load_stories(args.data)
    names = ("tinystories_val first half", "tinystories_val second half")
    if args.shift != "none":
        wiki = tokenize_file(args.data / "wikitext2_test" / "wiki.test.raw", tokenizer)
        if args.shift == "wiki-to-stories":
            calib_ids, names = wiki, ("wikitext2_test", names[1])
        else:
            eval_ids, names = wiki, (names[0], "wikitext2_test")
    nsamples = 4 if args.quick else args.nsamples
    if args.quick:
        eval_ids = eval_ids[:20_000]
    windows = calibration_windows(calib_ids, n=nsamples, length=args.seqlen, seed=0)  # (n, seqlen)
    calib = list(windows.split(8))  # batches of 8 windows
    print(
        f"stories260K_hf: calibration {nsamples} x {args.seqlen} tokens from {names[0]} ({calib_ids.numel():,} "
        f"tokens), evaluation on {names[1]} ({eval_ids.numel():,} tokens, {eval_ids.numel() // args.seqlen:,} "
        f"windows of {args.seqlen}){', block by block' if args.sequential else ''}"
    )
    quantize_fn = quantize_sequential if args.sequential else quanta.quantize
    float_nll = mean_nll(model, eval_ids, args.seqlen, batch_size=64)
    float_ppl = math.exp(float_nll)
    print(f"{'model':<22} {'ppl':>8} {'delta':>8} {'delta %':>8} {'vs RTN':>8} {'bytes':>10} {'quantize s':>11}")
    print(f"{'float32':<22} {float_ppl:>8.4f} {0:>8.4f} {0:>8.2f} {'':>8} {quanta.model_nbytes(model):>10,} {'':>11}")
    rtn_delta: dict[str, float] = {}  # the RTN preset's perplexity increase, by bits and group ("w4a16-g32")
    for preset in args.presets.split(","):
        start = time.perf_counter()
        quantized = quantize_fn(copy.deepcopy(model), preset, calib)
        seconds = time.perf_counter() - start
        ppl = math.exp(mean_nll(quantized, eval_ids, args.seqlen, batch_size=64))
        delta = ppl - float_ppl
        match = re.match(r"w\d+a\d+(-dyn)?(-g\d+)?", preset)
        base = match.group(0) if match else preset
        if preset == base:
            rtn_delta[base] = delta
        # The share of RTN's perplexity increase the method removes (the measure), same bits and group.
        removed = f"{100 * (1 - delta / rtn_delta[base]):.0f}%" if preset != base and rtn_delta.get(base) else ""
        print(
            f"{preset:<22} {ppl:>8.4f} {delta:>8.4f} {100 * delta / float_ppl:>8.2f} {removed:>8} "
            f"{quanta.model_nbytes(quantized):>10,} {seconds:>11.1f}"
        )
    print("Command: .venv/bin/python benchmarks/bench_lm.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
