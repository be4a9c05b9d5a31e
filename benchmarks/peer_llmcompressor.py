"""stories260K perplexity: llm-compressor's GPTQ (``oneshot`` + ``GPTQModifier``) against quanta at W4 g32, W3 g16
and W2 g16, weights only, groups along the input features, on CPU (issue 4's protocol, as bench_lm_peers.py).

Two steps, two virtualenvs (llm-compressor 0.14 needs transformers<=5.17, so it lives apart from .venv):

1. Quantize, with llm-compressor's own venv: the 32 seeded 256-token calibration windows of bench_lm.py (first
   half of tinystories_val, quanta.lm.calibration_windows, seed 0) go to ``oneshot`` as a tokenized Dataset; one
   ``GPTQModifier`` per setting with a ``config_groups`` scheme (int, ``strategy="group"``, ``group_size``),
   ``targets=["Linear"]``, ``ignore=["lm_head", "re:.*down_proj$"]`` (down_proj's in_features 172 is not a
   multiple of 32 or 16, so it stays float, as in every row of bench_lm_peers.py), in three variants: symmetric
   with the default minmax observer (as its W4A16 preset), asymmetric minmax (as W4A16_ASYM and quanta's groups),
   and asymmetric with its ``memoryless_mse`` observer (range shrink search, |error|^2.4, as quanta's gptq grid
   search); the library's defaults otherwise (``actorder="static"``, ``dampening_frac=0.01``, ``block_size=128``,
   its sequential pipeline). The dequantized weights (compressed_tensors ``quantize`` to integer codes, then
   ``dequantize``; float32) of every quantized linear go to DIR/W{bits}g{group}{,-asym,-asym-mse}.safetensors,
   keyed "<module name>.weight", with DIR/meta.json (timings after one untimed warm-up run, versions, calibration
   digest, errors verbatim).
2. Evaluate, with quanta's .venv: stories260K in float (quanta.lm.load_hf), those linears' weights replaced, then
   exp(quanta.eval.mean_nll) on the second half of tinystories_val, 256-token windows (bench_lm_peers.py's
   protocol); the calibration windows are rebuilt and checked against the digest the first step recorded.

Install (a CPU-only torch first, then llm-compressor constrained to it, so pip never pulls a CUDA torch):

    python3.11 -m venv /tmp/venv-llmc
    /tmp/venv-llmc/bin/pip install torch==2.13.0
    echo "torch==2.13.0+cpu" > /tmp/venv-llmc/constraints.txt
    /tmp/venv-llmc/bin/pip install -c /tmp/venv-llmc/constraints.txt llmcompressor==0.14.0.1

Run (from the repository root):

    HF_HUB_OFFLINE=1 /tmp/venv-llmc/bin/python benchmarks/peer_llmcompressor.py --quantize /tmp/llmc
    .venv/bin/python benchmarks/peer_llmcompressor.py --evaluate /tmp/llmc
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETTINGS = ((4, 32), (3, 16), (2, 16))
NSAMPLES, SEQLEN, SEED = 32, 256, 0
# quanta's rows of BENCHMARKS.md, "Against peer tools at equal bits and group size" (down_proj float in every row).
QUANTA = {
    (4, 32): {"gptq": 6.0882, "awq_gptq": 6.0423},
    (3, 16): {"gptq": 6.8508, "awq_gptq": 6.6627},
    (2, 16): {"gptq": 21.6496, "awq_gptq": 20.0213},
}
QUANTA_FLOAT = 5.8488


# (file suffix, symmetric, observer): the W4A16 preset's symmetric minmax grid, W4A16_ASYM's asymmetric one, and
# asymmetric with llm-compressor's "mse" observer (range shrunk to 0.8 at most, |error|^2.4, like quanta's gptq).
VARIANTS = (("", True, None), ("-asym", False, None), ("-asym-mse", False, "memoryless_mse"))


def _tag(bits: int, group: int, suffix: str) -> str:
    return f"W{bits}g{group}{suffix}"


def _calibration(data: Path, tokenizer: Any) -> torch.Tensor:
    """bench_lm.py's calibration windows: (32, 256) ids from the first half of tinystories_val, seed 0."""
    text = data / "tinystories_val" / "tinystories_val.txt"
    try:  # quanta's own helpers when quanta imports under this interpreter
        sys.path.insert(0, str(ROOT))
        from quanta.lm import calibration_windows, tokenize_file
    except ImportError:  # the same steps as quanta.lm.text
        ids = torch.tensor(tokenizer.encode(text.read_text(encoding="utf-8"), add_special_tokens=False))
        half = ids[: ids.numel() // 2]
        generator = torch.Generator().manual_seed(SEED)
        starts = torch.randint(0, half.numel() - SEQLEN + 1, (NSAMPLES,), generator=generator)
        return half[starts[:, None] + torch.arange(SEQLEN)]
    ids = tokenize_file(text, tokenizer)
    return calibration_windows(ids[: ids.numel() // 2], n=NSAMPLES, length=SEQLEN, seed=SEED)


def _digest(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _gptq(
    model: nn.Module, dataset: Any, bits: int, group: int, symmetric: bool, observer: str | None
) -> dict[str, torch.Tensor]:
    """llm-compressor's GPTQ on ``model`` (in place); the dequantized float32 weight of every quantized linear."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, dequantize, quantize
    from compressed_tensors.quantization.utils import calculate_range
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    weights = QuantizationArgs(
        num_bits=bits, type="int", strategy="group", group_size=group, symmetric=symmetric, observer=observer
    )
    recipe = GPTQModifier(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=["lm_head", "re:.*down_proj$"],
    )
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=NSAMPLES,
        max_seq_length=SEQLEN,
        shuffle_calibration_samples=False,
    )
    out = {}
    for name, module in model.named_modules():
        args = getattr(getattr(module, "quantization_scheme", None), "weights", None)
        if args is None:
            continue
        w = module.weight.detach()
        q = quantize(w, module.weight_scale, module.weight_zero_point, args)  # integer codes, stored as float
        low, high = (int(v) for v in calculate_range(args, w.device))
        assert q.min() >= low and q.max() <= high and torch.equal(q, q.round()), f"{name}: codes off the grid"
        w_hat = dequantize(q, module.weight_scale, module.weight_zero_point, args).float()
        # GPTQ leaves its quantized weight in module.weight; re-quantizing it must give the same values.
        assert torch.allclose(w_hat, w.float(), atol=1e-6, rtol=1e-5), f"{name}: codes do not reproduce the weight"
        out[f"{name}.weight"] = w_hat.contiguous()
    return out


def quantize_all(out_dir: Path, data: Path) -> None:
    """Step 1 (llm-compressor's venv): one GPTQ run per setting and variant (VARIANTS)."""
    import compressed_tensors
    import llmcompressor
    import transformers
    from datasets import Dataset
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model_dir = data / "stories260K_hf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    windows = _calibration(data, tokenizer)
    dataset = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "calibration_sha256": _digest(windows),
        "versions": {
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "runs": {},
    }

    def load() -> nn.Module:
        return transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)

    _gptq(load().eval(), dataset, 4, 32, True, None)  # warm-up (imports, first tracing), not timed
    for bits, group in SETTINGS:
        for suffix, symmetric, observer in VARIANTS:
            tag = _tag(bits, group, suffix)
            model = load().eval()
            start = time.perf_counter()
            try:
                tensors = _gptq(model, dataset, bits, group, symmetric, observer)
            except Exception as error:  # the library's refusal is the result
                meta["runs"][tag] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                print(f"{tag}: {type(error).__name__}: {error}", flush=True)
                continue
            seconds = time.perf_counter() - start
            save_file(tensors, str(out_dir / f"{tag}.safetensors"))
            meta["runs"][tag] = {"seconds": round(seconds, 2), "layers": sorted(tensors)}
            print(
                f"{tag}: {len(tensors)} linears quantized in {seconds:.1f} s (oneshot, incl. calibration)", flush=True
            )
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def evaluate(out_dir: Path, data: Path) -> None:
    """Step 2 (quanta's venv): perplexity with llm-compressor's weights in place of the float ones."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_lm import load_stories

    from quanta.eval import mean_nll
    from quanta.lm import calibration_windows

    torch.manual_seed(0)
    model, _, calib_ids, eval_ids = load_stories(data)  # bench_lm.py's protocol
    meta = json.loads((out_dir / "meta.json").read_text())
    windows = calibration_windows(calib_ids, n=NSAMPLES, length=SEQLEN, seed=SEED)
    if _digest(windows) != meta["calibration_sha256"]:
        raise SystemExit("llm-compressor was calibrated on other windows than quanta.lm.calibration_windows gives")
    print(f"calibration windows identical to quanta's (sha256 {meta['calibration_sha256'][:16]}...)")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}
    expected = sorted(f"{n}.weight" for n in linears if not n.endswith("down_proj"))
    float_ppl = math.exp(mean_nll(model, eval_ids, SEQLEN, batch_size=64))
    print(f"float32 perplexity {float_ppl:.4f} (BENCHMARKS.md: {QUANTA_FLOAT}) on {eval_ids.numel():,} tokens")
    versions = meta["versions"]
    print(f"llm-compressor {versions['llmcompressor']}, compressed-tensors {versions['compressed_tensors']}")
    names = {"": "sym", "-asym": "asym", "-asym-mse": "asym mse"}
    print(
        f"{'setting':<8} " + " ".join(f"{'llmc ' + names[v[0]]:>14}" for v in VARIANTS) + f" {'quanta gptq':>12} "
        f"{'quanta awq_gptq':>16}   llmc quantize s"
    )
    for bits, group in SETTINGS:
        cells, times = [], []
        for suffix, _, _ in VARIANTS:
            tag = _tag(bits, group, suffix)
            run = meta["runs"].get(tag, {"error": "not run"})
            if "error" in run:
                cells.append("error")
                times.append("-")
                print(f"{tag}: {run['error']}")
                continue
            tensors = load_file(str(out_dir / f"{tag}.safetensors"))
            if sorted(tensors) != expected:
                raise SystemExit(f"{tag}: layers {sorted(tensors)}, expected {expected}")
            q = copy.deepcopy(model)
            with torch.no_grad():
                for key, value in tensors.items():
                    layer = q.get_submodule(key.removesuffix(".weight"))
                    layer.weight.copy_(value.reshape(layer.weight.shape).float())
            cells.append(f"{math.exp(mean_nll(q, eval_ids, SEQLEN, batch_size=64)):.4f}")
            times.append(f"{run['seconds']:.1f}")
        ref = QUANTA[(bits, group)]
        print(
            f"W{bits} g{group:<4} " + " ".join(f"{c:>14}" for c in cells) + f" {ref['gptq']:>12.4f} "
            f"{ref['awq_gptq']:>16.4f}   {' / '.join(times)}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quantize", type=Path, metavar="DIR", help="run llm-compressor (its venv), write DIR")
    mode.add_argument("--evaluate", type=Path, metavar="DIR", help="perplexity of DIR's weights (quanta's venv)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quantize:
        quantize_all(args.quantize, args.data)
    else:
        evaluate(args.evaluate, args.data)


if __name__ == "__main__":
    main()
