"""stories260K perplexity: quanta's methods against peer tools at equal bits and group size (issue 4).

Same protocol as bench_lm.py (32 seeded windows of 256 tokens from the first half of tinystories_val for
calibration, perplexity on the second half). Peers quantize the same decoder linears; their dequantized weights
are put in place of the float ones, which measures their accuracy exactly (their kernels compute with those
values). Layers a peer cannot take at a group size (stories260K's down_proj has in_features 172, which 32 and 16
do not divide) stay in float **for every row of that comparison**, quanta's included, so the rows are comparable;
bench_lm.py has quanta's full results.

Peers, each optional (a row says why it is missing):
- hqq (``pip install hqq`` with ``DISABLE_CUDA=1``): HQQ's half-quadratic optimiser, ``axis=1`` (groups along the
  input features, as quanta's), ``optimize=True``, float scales and zero points.

    .venv/bin/python benchmarks/bench_lm_peers.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lm import load_stories

import quanta
from quanta.eval import mean_nll
from quanta.lm import calibration_windows
from quanta.recipe import Recipe, Rule, resolve_recipe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETTINGS = ((4, 32), (3, 16), (2, 16))
METHODS = ("", "-hqq", "-gptq", "-awq_gptq")


def _decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


def _skipped(model: nn.Module, group: int) -> list[str]:
    return [n for n, m in _decoder_linears(model).items() if m.in_features % group]


def _recipe(preset: str, skip: list[str]) -> Recipe:
    base = resolve_recipe(preset)
    keep = tuple(Rule(pattern=name, skip=True) for name in skip)
    return Recipe(rules=(*keep, *base.rules), name=f"{preset} (float: {len(skip)} layers)", kv_bits=base.kv_bits)


def _hqq(model: nn.Module, bits: int, group: int, skip: list[str]) -> nn.Module | str:
    try:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    except ImportError:
        return "hqq is not installed (DISABLE_CUDA=1 pip install hqq)"
    out = copy.deepcopy(model)
    config = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)
    for name, layer in _decoder_linears(out).items():
        if name in skip:
            continue
        donor = copy.deepcopy(layer)  # HQQLinear consumes the layer it is given
        q = HQQLinear(donor, config, compute_dtype=torch.float32, device="cpu")
        with torch.no_grad():
            layer.weight.copy_(q.dequantize().reshape(layer.weight.shape).float())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true", help="4 calibration windows, 20,000 evaluation tokens")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, _, calib_ids, eval_ids = load_stories(args.data)  # bench_lm.py's protocol
    eval_ids = eval_ids[:20_000] if args.quick else eval_ids
    windows = calibration_windows(calib_ids, n=4 if args.quick else 32, length=256, seed=0)
    calib = list(windows.split(8))
    float_ppl = math.exp(mean_nll(model, eval_ids, 256, batch_size=64))
    print(f"float32 perplexity {float_ppl:.4f} on {eval_ids.numel():,} tokens (tinystories_val second half)")
    print(f"{'bits/group':<11} {'tool':<10} {'method':<14} {'ppl':>9} {'delta':>9} {'vs RTN':>7}  float layers")
    for bits, group in SETTINGS:
        skip = _skipped(model, group)
        rtn_delta = None
        for method in METHODS:
            preset = f"w{bits}a16-g{group}{method}"
            q = quanta.quantize(copy.deepcopy(model), _recipe(preset, skip), calib)
            delta = math.exp(mean_nll(q, eval_ids, 256, batch_size=64)) - float_ppl
            rtn_delta = delta if not method else rtn_delta
            removed = f"{100 * (1 - delta / rtn_delta):.0f}%" if method and rtn_delta else ""
            name = method.lstrip("-") or "rtn"
            print(
                f"W{bits} g{group:<7} {'quanta':<10} {name:<14} {float_ppl + delta:>9.4f} {delta:>+9.4f} "
                f"{removed:>7}  {len(skip)}"
            )
        peer = _hqq(model, bits, group, skip)
        if isinstance(peer, str):
            print(f"W{bits} g{group:<7} {'hqq':<10} {'-':<14} {'':>9} {'':>9} {'':>7}  ({peer})")
            continue
        delta = math.exp(mean_nll(peer, eval_ids, 256, batch_size=64)) - float_ppl
        removed = f"{100 * (1 - delta / rtn_delta):.0f}%" if rtn_delta else ""
        row = f"{float_ppl + delta:>9.4f} {delta:>+9.4f} {removed:>7}  {len(skip)}"
        print(f"W{bits} g{group:<7} {'hqq':<10} {'hqq':<14} {row}")
    print(
        "Command: .venv/bin/python benchmarks/bench_lm_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )


if __name__ == "__main__":
    main()
