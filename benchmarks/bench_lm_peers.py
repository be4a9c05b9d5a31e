"""stories260K perplexity: quanta's methods against peer tools at equal bits and group size (issue 4).

Same protocol as bench_lm.py (32 seeded windows of 256 tokens from the first half of tinystories_val for
calibration, perplexity on the second half). Peers quantize the same decoder linears; their dequantized weights
are put in place of the float ones, which measures their accuracy exactly (their kernels compute with those
values). Layers a peer cannot take at a group size (stories260K's down_proj has in_features 172, which 32 and 16
do not divide) stay in float **for every row of that comparison**, quanta's included, so the rows are comparable;
bench_lm.py has quanta's full results.

Peers, each optional (a row says why it is missing); install each into .venv with ``-c .venv/constraints.txt`` so
pip keeps torch 2.13.0+cpu:
- hqq (``DISABLE_CUDA=1 pip install -c .venv/constraints.txt hqq==0.2.8.post1``): HQQ's half-quadratic optimiser,
  ``axis=1`` (groups along the input features, as quanta's), ``optimize=True``, float scales and zero points.
- optimum-quanto (``pip install -c .venv/constraints.txt optimum-quanto==0.2.7``): ``MaxOptimizer`` (quanto's
  default for sub-8-bit weights: asymmetric min-max, float scales and a float shift, i.e. quanta's ``fmin`` grid,
  where the presets here store an integer zero point) and ``quantize_weight`` with ``axis=0`` (groups along the
  input features) at qint4 / qint2; quanto has no 3-bit type, so its W3 row says so.
  quanto's ``quantize(model, weights=qint4)`` has no group-size argument (it picks 128 stepping down to 32 itself
  and falls back to per-channel when in_features <= 128 or none divides: every stories260K layer), hence the
  direct call.
- torchao (``pip install -c .venv/constraints.txt torchao==0.18.0``): ``Int4WeightOnlyConfig(group_size=32)``
  (its int4 weight-only path; group sizes 32-256 only; every packing format fails on CPU in 0.18, and the row
  prints why), and ``IntxWeightOnlyConfig(weight_dtype=torch.int{2,3,4}, granularity=PerGroup(g))`` with
  ``MappingType.ASYMMETRIC`` (as quanta's groups) and with its default ``SYMMETRIC``, float scales.

    .venv/bin/python benchmarks/bench_lm_peers.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
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


def _substitute(model: nn.Module, skip: list[str], dequantize: Callable[[nn.Linear], torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose decoder linears (bar ``skip``) hold the weights a peer dequantizes."""
    out = copy.deepcopy(model)
    for name, layer in _decoder_linears(out).items():
        if name in skip:
            continue
        with torch.no_grad():
            layer.weight.copy_(dequantize(layer).reshape(layer.weight.shape).float())
    return out


def _hqq(model: nn.Module, bits: int, group: int, skip: list[str]) -> nn.Module | str:
    try:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    except ImportError:
        return "hqq is not installed (DISABLE_CUDA=1 pip install hqq)"
    config = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)

    def dequantize(layer: nn.Linear) -> torch.Tensor:
        donor = copy.deepcopy(layer)  # HQQLinear consumes the layer it is given
        return HQQLinear(donor, config, compute_dtype=torch.float32, device="cpu").dequantize()

    return _substitute(model, skip, dequantize)


def _quanto(model: nn.Module, bits: int, group: int, skip: list[str]) -> nn.Module | str:
    try:
        from optimum.quanto import MaxOptimizer, qtypes, quantize_weight
    except ImportError:
        return "optimum-quanto is not installed (pip install optimum-quanto)"
    qtype = qtypes.get(f"qint{bits}")
    if qtype is None:
        return f"no {bits}-bit type (quanto's qtypes: {', '.join(qtypes)})"
    # What QLinear.qweight() does for a sub-8-bit qtype, with our group size in place of the one
    # QModuleMixin.__init__ would choose: the default MaxOptimizer, then quantize_weight along axis 0.
    optimizer = MaxOptimizer()

    def dequantize(layer: nn.Linear) -> torch.Tensor:
        w = layer.weight.detach()
        scale, shift = optimizer(w, qtype=qtype, axis=0, group_size=group)
        q = quantize_weight(w, qtype=qtype, axis=0, scale=scale, shift=shift, group_size=group)
        return q.dequantize()

    return _substitute(model, skip, dequantize)


def _torchao_int4(model: nn.Module, group: int, skip: list[str]) -> nn.Module | str:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    # Every packing format is tried on a real layer; the first that quantizes on CPU is used, else the row
    # carries each format's error. tile_packed_to_4d (tinygemm) accepts bfloat16 weights only.
    probe = next(m for n, m in _decoder_linears(model).items() if n not in skip)
    errors = []
    for fmt in Int4PackingFormat:
        dtype = torch.bfloat16 if fmt == Int4PackingFormat.TILE_PACKED_TO_4D else torch.float32
        config = Int4WeightOnlyConfig(group_size=group, int4_packing_format=fmt, set_inductor_config=False)

        def dequantize(layer: nn.Linear, config=config, dtype=dtype) -> torch.Tensor:
            donor = copy.deepcopy(layer).to(dtype)
            quantize_(donor, config)
            return donor.weight.dequantize()

        try:
            dequantize(probe)
        except Exception as error:  # the exact error is the result on a machine where it cannot run
            errors.append(f"{fmt.value}: {type(error).__name__}: {error}")
            continue
        return _substitute(model, skip, dequantize)
    return f"Int4WeightOnlyConfig(group_size={group}) fails on CPU: " + "; ".join(errors)


def _torchao_intx(model: nn.Module, bits: int, group: int, skip: list[str], symmetric: bool) -> nn.Module | str:
    try:
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerGroup, quantize_
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    config = IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group), mapping_type=mapping
    )

    def dequantize(layer: nn.Linear) -> torch.Tensor:
        donor = copy.deepcopy(layer)  # quantize_ swaps the weight of the module it is given
        quantize_(donor, config)
        return donor.weight.dequantize()  # an IntxUnpackedToInt8Tensor; its forward computes with these values

    return _substitute(model, skip, dequantize)


def _peers(model: nn.Module, bits: int, group: int, skip: list[str]) -> Iterator[tuple[str, str, nn.Module | str]]:
    """(tool, method, model with the peer's weights, or why there is none), one per peer row."""
    yield "hqq", "hqq", _hqq(model, bits, group, skip)
    yield "quanto", "max", _quanto(model, bits, group, skip)
    if bits == 4:  # Int4WeightOnlyConfig is 4-bit only
        yield "torchao", "int4wo", _torchao_int4(model, group, skip)
    yield "torchao", "intx-asym", _torchao_intx(model, bits, group, skip, symmetric=False)
    yield "torchao", "intx-sym", _torchao_intx(model, bits, group, skip, symmetric=True)


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
    blocks = len(model.model.layers)
    print(
        f"{'bits/group':<11} {'tool':<10} {'method':<14} {'ppl':>9} {'delta':>9} {'vs RTN':>7}  float layers  "
        "s / block (quantizing)"
    )
    for bits, group in SETTINGS:
        skip = _skipped(model, group)
        rtn_delta = None
        for method in METHODS:
            preset = f"w{bits}a16-g{group}{method}"
            start = time.perf_counter()
            q = quanta.quantize(copy.deepcopy(model), _recipe(preset, skip), calib)
            per_block = (time.perf_counter() - start) / blocks
            delta = math.exp(mean_nll(q, eval_ids, 256, batch_size=64)) - float_ppl
            rtn_delta = delta if not method else rtn_delta
            removed = f"{100 * (1 - delta / rtn_delta):.0f}%" if method and rtn_delta else ""
            name = method.lstrip("-") or "rtn"
            print(
                f"W{bits} g{group:<7} {'quanta':<10} {name:<14} {float_ppl + delta:>9.4f} {delta:>+9.4f} "
                f"{removed:>7}  {len(skip):<12}  {per_block:.2f}"
            )
        peers = _peers(model, bits, group, skip)
        while True:
            start = time.perf_counter()
            try:
                tool, name, peer = next(peers)  # the peer quantizes (and its weights are dequantized) here
            except StopIteration:
                break
            per_block = (time.perf_counter() - start) / blocks
            if isinstance(peer, str):
                print(f"W{bits} g{group:<7} {tool:<10} {'-':<14} {'':>9} {'':>9} {'':>7}  ({peer})")
                continue
            delta = math.exp(mean_nll(peer, eval_ids, 256, batch_size=64)) - float_ppl
            removed = f"{100 * (1 - delta / rtn_delta):.0f}%" if rtn_delta else ""
            row = f"{float_ppl + delta:>9.4f} {delta:>+9.4f} {removed:>7}  {len(skip):<12}  {per_block:.2f}"
            print(f"W{bits} g{group:<7} {tool:<10} {name:<14} {row}")
    args_given = argv if argv is not None else sys.argv[1:]
    print("Command: " + " ".join([".venv/bin/python benchmarks/bench_lm_peers.py", *args_given]))


if __name__ == "__main__":
    main()
