"""Mixed precision under a budget vs the best uniform recipe at equal or fewer bytes (issue 8, slice 2).

For each model, ``quanta.sensitivity`` measures the KL divergence from the float model with one layer quantized
at a time, for every candidate; ``quanta.mixed_precision.allocate`` then picks one candidate per layer within the
bytes of uniform recipes near 3 and 4 bits per weight (and at exactly 3.0 / 4.0 bits per weight), and the model is
quantized with that recipe. The baseline is the best of every candidate applied uniformly within the same budget.
Each row prints the bytes (``quanta.model_nbytes``, whole model), the bits per weight (packed weight bytes x 8 /
quantized weights), the test metric, and the KL on the sensitivity data predicted by summing the layers' KL against
the KL measured on the quantized model (how additive the effects are).

* ResNet-20 on the CIFAR-10 sample: calibration on 128 training images, sensitivity KL on the other 272
  training images, accuracy and KL on the 150 test images. RTN weights.
* stories260K: bench_lm.py's protocol (tinystories_val tokenized whole, split at the middle token; calibration
  32 seeded windows of 256 tokens from the first half; perplexity on the second half, windows of 256). The
  sensitivity KL is on 16 windows of the first half. GPTQ weights (w8a16: RTN); quantized block by block
  (``quantize_sequential``) for uniform and mixed alike.

    .venv/bin/python benchmarks/bench_mixed_precision.py [--only resnet|stories]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.eval.sensitivity_metric import build_metric
from quanta.mixed_precision import allocate
from quanta.nn.base import QuantModule

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESNET_CANDS = [f"w{b}a16-g{g}" for b in (2, 3, 4) for g in (32, 64, 128) if (b, g) != (2, 128)] + ["w8a16"]
RESNET_UNIFORM = ("w2a16-g32", "w3a16-g128", "w3a16-g64", "w3a16-g32", "w4a16-g128", "w4a16-g64")
LM_CANDS = [f"w{b}a16-g{g}-gptq" for b, g in ((2, 16), (2, 32), (2, 64), (3, 16), (3, 32), (3, 64), (4, 32), (4, 64))]
LM_CANDS.append("w8a16")
LM_UNIFORM = tuple(f"{p}-gptq" for p in ("w2a16-g32", "w3a16-g64", "w2a16-g16", "w3a16-g32", "w4a16-g64", "w3a16-g16"))


def packed_bpw(model: torch.nn.Module) -> float:
    qts = [q for m in model.modules() if isinstance(m, QuantModule) for q in m.qweights.values()]
    return 8 * sum(q.nbytes for q in qts) / sum(q.numel for q in qts)


def compare(
    title: str,
    sens: Any,
    build: Callable[[Any], torch.nn.Module],
    score: Callable[[torch.nn.Module], float],
    kl: Any,
    uniform: tuple[str, ...],
    metric: str,
    higher_is_better: bool,
    test_kl: Any = None,
) -> None:
    """Print every candidate as a uniform row, then mixed rows at the bytes of each of ``uniform`` and at 3.0 / 4.0
    bits per weight; each mixed row is compared with the best uniform row within the same budget (bytes, or bits
    per weight)."""
    rows: list[dict[str, Any]] = []
    for name in sens.candidates:  # every candidate as a uniform recipe: the baselines "best uniform" picks from
        model = build(name)
        predicted = math.fsum(e.effect for e in sens.entries if e.candidate == name)
        rows.append(
            {"recipe": name, "bytes": quanta.model_nbytes(model), "bpw": packed_bpw(model), "score": score(model)}
            | {"predicted": predicted, "measured": kl(model), "test_kl": test_kl(model) if test_kl else None}
            | {"mixed": False}
        )
    budgets: list[tuple[str, dict[str, Any]]] = [
        (f"mixed <= {r['recipe']}", {"budget_bytes": r["bytes"]}) for r in list(rows) if r["recipe"] in uniform
    ]
    budgets += [(f"mixed @ {b:.1f} bpw", {"target_bpw": b}) for b in (3.0, 4.0)]
    for label, budget in budgets:
        alloc = allocate(sens, **budget)
        model = build(alloc.recipe())
        assert quanta.model_nbytes(model) == alloc.nbytes, "predicted bytes must be the realised ones"
        mix = ", ".join(f"{n}x{c.replace('a16', '').replace('-gptq', '')}" for c, n in sorted(alloc.counts().items()))
        rows.append(
            {"recipe": label, "bytes": alloc.nbytes, "bpw": packed_bpw(model), "score": score(model)}
            | {
                "predicted": alloc.predicted_effect,
                "measured": kl(model),
                "test_kl": test_kl(model) if test_kl else None,
            }
            | {"mixed": True, "mix": mix, "budget": budget}
        )
    better = max if higher_is_better else min
    print(f"\n## {title}\n")
    extra = " test KL |" if test_kl else ""
    print(
        f"| recipe | bytes | bpw | {metric} |{extra} best uniform in budget | mixed - uniform | KL pred. | KL meas. |"
    )
    print("|---|---:|---:|---:|" + ("---:|" if test_kl else "") + "---|---:|---:|---:|")
    for r in rows:
        base, diff = "", ""
        if r["mixed"]:
            limit = r["budget"]
            fits = [
                u
                for u in rows
                if not u["mixed"]
                and (
                    u["bytes"] <= limit["budget_bytes"] if "budget_bytes" in limit else u["bpw"] <= limit["target_bpw"]
                )
            ]
            if fits:
                best = better(fits, key=lambda u: u["score"])
                base = f"{best['recipe']} {best['score']:.4g}"
                diff = f"{r['score'] - best['score']:+.4g}"
            else:
                base = "none fits"
        test = f" {r['test_kl']:.4g} |" if test_kl else ""
        print(
            f"| {r['recipe']} | {r['bytes']:,} | {r['bpw']:.3f} | {r['score']:.4g} |{test} {base} | {diff} "
            f"| {r['predicted']:.4g} | {r['measured']:.4g} |"
        )
    print("\nMixed allocations (layers x candidate):")
    for r in rows:
        if r["mixed"]:
            print(f"- {r['recipe']}: {r['mix']}")


def resnet() -> None:
    from quanta.eval import accuracy
    from quanta.zoo import cifar10_sample, load_pretrained

    data = cifar10_sample(DATA / "cifar10_sample")
    net = load_pretrained("resnet20", DATA / "resnet_cifar10" / "resnet20-12fca82f.th").eval()
    calib = list(data["x_train"][:128].split(64))
    held = [data["x_train"][128:]]
    test = (data["x_test"], data["y_test"])
    start = time.perf_counter()
    sens = quanta.sensitivity(net, RESNET_CANDS, calib, "kl", eval_data=held)
    seconds = time.perf_counter() - start
    kl_test = build_metric("kl", net, [test[0]], calib)
    kl_held = build_metric("kl", net, held, calib)
    float_acc = accuracy(net, test)

    def build(recipe: Any) -> torch.nn.Module:
        return quanta.quantize(copy.deepcopy(net), recipe, calib=calib)

    title = (
        f"ResNet-20, CIFAR-10 sample: accuracy on 150 test images (float {float_acc:.2%}, "
        f"{quanta.model_nbytes(net):,} bytes); sensitivity: {len(sens.entries)} measurements in {seconds:.0f} s"
    )
    compare(title, sens, build, lambda m: 100 * accuracy(m, test), kl_held, RESNET_UNIFORM, "test acc %", True, kl_test)
    print("(KL pred./meas.: on the 272 held-out training images; test KL: on the 150 test images)")


def stories() -> None:
    from quanta.eval import mean_nll
    from quanta.lm import calibration_windows, quantize_sequential

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_lm import load_stories

    model, _, calib_ids, eval_ids = load_stories(DATA)
    calib = list(calibration_windows(calib_ids, n=32, length=256, seed=0).split(8))
    held = calib_ids[-16 * 256 :]
    start = time.perf_counter()
    sens = quanta.sensitivity(model, LM_CANDS, calib, "kl", eval_data=held, window=256)
    seconds = time.perf_counter() - start
    kl = build_metric("kl", model, held, calib, window=256)
    float_ppl = math.exp(mean_nll(model, eval_ids, 256, batch_size=64))

    def build(recipe: Any) -> torch.nn.Module:
        return quantize_sequential(copy.deepcopy(model), recipe, calib)

    def ppl(m: torch.nn.Module) -> float:
        return math.exp(mean_nll(m, eval_ids, 256, batch_size=64))

    title = (
        f"stories260K: perplexity on tinystories_val's second half ({eval_ids.numel():,} tokens; float "
        f"{float_ppl:.4f}, {quanta.model_nbytes(model):,} bytes); sensitivity: {len(sens.entries)} measurements "
        f"in {seconds:.0f} s"
    )
    compare(title, sens, build, ppl, kl, LM_UNIFORM, "ppl", False)
    print("(KL pred./meas.: on 16 windows of 256 tokens from the first half)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("resnet", "stories"), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.only in (None, "resnet"):
        resnet()
    if args.only in (None, "stories"):
        stories()
    print("\nCommand: .venv/bin/python benchmarks/bench_mixed_precision.py " + " ".join(argv or sys.argv[1:]))


if __name__ == "__main__":
    main()
