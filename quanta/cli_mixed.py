"""``quanta quantize MODEL --target-bpw B | --max-bytes N``: mixed precision chosen under a budget.

The command's ``quantize`` dispatches here when a budget is given. Per layer and candidate (``--candidates``), the
KL divergence of the model's output from the float model's on the calibration inputs is measured with one layer
quantized at a time (:func:`quanta.sensitivity`); :func:`quanta.mixed_precision.allocate` picks one candidate per
layer to minimise the summed KL within the budget; the model is quantized with that per-layer recipe (zoo models:
``quanta.quantize``; language models: block by block, ``quanta.lm.quantize_sequential``), saved, reloaded and
checked. The recipe is stored in quanta.json, and ``quanta quantize MODEL -r OUT/quanta.json`` reproduces the
model exactly.
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path
from typing import Any

from quanta.cli import _numbers_table, _Out
from quanta.errors import QuantaError

__all__ = ["DEFAULT_CANDIDATES", "parse_size", "quantize_mixed"]

DEFAULT_CANDIDATES = "w2a16-g32,w3a16-g32,w4a16-g32,w8a16"
LM_CALIB_CANDIDATES = "w2a16-g32-gptq,w3a16-g32-gptq,w4a16-g32-gptq,w8a16"  # language models (calib is required)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*?)b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count: ``"180000"``, ``"180k"`` / ``"180kB"`` (10**3), ``"1.5M"`` (10**6), ``"2G"``, or binary
    ``"64KiB"`` / ``"1.5MiB"`` (2**10, 2**20); a fraction of a byte is rounded down.

    Raises:
        QuantaError: not a positive size in that form.

    Example:
        >>> parse_size("180k"), parse_size("1.5M"), parse_size("64KiB"), parse_size("250")
        (180000, 1500000, 65536, 250)
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if unit.endswith("i"):  # "KiB": the regex took the "B"
        unit += "b"
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise QuantaError(
            f"--max-bytes {text!r} is not a size; give bytes as 180000, 180k, 1.5M, 2G (powers of 1000) or 64KiB."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def _zoo(model: str, calib: Path, opts: dict[str, Any]) -> tuple[Any, list[Any], str]:
    """(float model, calibration batches, zoo name) for zoo:NAME=PATH."""
    from quanta.cli_data import calibration_batches, parse_model
    from quanta.zoo import load_pretrained

    name, weights = parse_model(model)
    return (
        load_pretrained(name, weights),
        calibration_batches(calib, name, opts["batch_size"], opts["max_batches"]),
        name,
    )


def _language_model(source: Path, calib: Path, opts: dict[str, Any]) -> tuple[Any, list[Any], int, Any]:
    """(float model, calibration batches, window, tokenizer) for a transformers directory, as quanta quantize."""
    from quanta.cli_lm import lm_inputs

    if calib.suffix.lower() == ".npz":
        raise QuantaError(f"{calib}: a language model calibrates on a text file (--calib FILE.txt), not .npz.")
    if (source / "quanta.json").is_file():
        raise QuantaError(f"{source} is already quantized (it has quanta.json); pass the float model directory.")
    lm = lm_inputs(source, calib, None, opts)
    assert lm.batches is not None
    return lm.net, lm.batches, lm.window, lm.tokenizer


def quantize_mixed(
    model: str,
    output: Path,
    calib: Path | None,
    target_bpw: float | None,
    max_bytes: str | None,
    candidates: str | None,
    opts: dict[str, Any],
    out: _Out,
) -> None:
    """Measure, allocate, quantize, save and check (``opts``: nsamples, seqlen, batch_size, max_batches,
    overwrite, seed, as ``quanta quantize`` takes them)."""
    import torch

    import quanta
    from quanta.eval.sensitivity import sensitivity
    from quanta.eval.sensitivity_metric import build_metric
    from quanta.mixed_precision import allocate

    start = time.perf_counter()
    is_lm = Path(model).is_dir()
    if target_bpw is not None and max_bytes is not None:
        raise QuantaError("give one budget: --target-bpw B (bits per weight) or --max-bytes N (whole model).")
    if target_bpw is not None and (not math.isfinite(target_bpw) or target_bpw <= 0):
        raise QuantaError(f"--target-bpw {target_bpw} must be a positive number of bits per weight, e.g. 3.5.")
    budget = None if max_bytes is None else parse_size(max_bytes)
    if output.exists() and not opts["overwrite"]:
        raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
    if calib is None:
        kind = "FILE.txt (text in the model's domain)" if is_lm else "FILE.npz (an array x of images)"
        raise QuantaError(f"a budget is allocated from per-layer sensitivities measured on data: pass --calib {kind}.")
    names = [c.strip() for c in (candidates or (LM_CALIB_CANDIDATES if is_lm else DEFAULT_CANDIDATES)).split(",")]
    if not all(names):
        raise QuantaError(f"--candidates {candidates!r} holds an empty name; give presets such as w2a16-g32,w8a16.")
    window, tokenizer, zoo_name = None, None, None
    with out.status(f"loading {model}..."):
        if is_lm:
            net, batches, window, tokenizer = _language_model(Path(model), calib, opts)
        else:
            net, batches, zoo_name = _zoo(model, calib, opts)
    float_nbytes = quanta.model_nbytes(net)
    kl = build_metric("kl", net, None, batches, window=window)  # the float outputs, before anything is packed
    result = sensitivity(net, names, batches, "kl", window=window, progress=not out.quiet)
    allocation = allocate(result, budget_bytes=budget, target_bpw=target_bpw, candidates=names)
    recipe = allocation.recipe()
    reference = copy.deepcopy(net) if opts.get("report", True) else None  # the float model, for the report card
    with out.status(f"quantizing with {recipe.name}..."):
        if is_lm:
            from quanta.lm import quantize_sequential

            quantize_sequential(net, recipe, batches)
        else:
            quanta.quantize(net, recipe, calib=batches)
    measured = kl(net)
    nbytes = quanta.model_nbytes(net)
    if budget is not None and nbytes > budget:
        raise QuantaError(
            f"the quantized model holds {nbytes:,} bytes, over the budget {budget:,}; please report this."
        )
    quanta.save(net, output, overwrite=opts["overwrite"], tokenizer=tokenizer)
    loaded = quanta.load(output)
    probe = batches[0][:1] if is_lm else batches[0][:8]
    with torch.no_grad():
        same = torch.equal(loaded(probe).logits, net(probe).logits) if is_lm else torch.equal(loaded(probe), net(probe))
    if not same:
        raise QuantaError(f"{output} does not reproduce the quantized model's outputs; please report this.")
    report_lines: list[str] = []
    if reference is not None:  # report.json + report.html beside the model, as for a recipe
        from quanta.cli_report import make_report

        sources = {"ref": model, "eval": None, "seqlen": window, "max_tokens": None}
        report_lines = make_report(output, reference, None, sources, out, window=window)
    data = {
        "model": model,
        "zoo": zoo_name,
        "output": output,
        "candidates": names,
        "float_nbytes": float_nbytes,
        "nbytes": nbytes,
        "allocation": allocation.to_dict(),
        "recipe": recipe.to_dict(),
        "measured_effect": measured,
        "reloaded_bit_identical": True,
        "report": None if reference is None else str(output / "report.html"),
        "seconds": time.perf_counter() - start,
    }
    out.json(data)
    _report(model, output, allocation, nbytes, float_nbytes, measured, out)
    for line in report_lines:
        out.print(line)
    out.note(f"{len(result.entries)} measurements and the quantization in {time.perf_counter() - start:.1f} s")


def _report(
    model: str, output: Path, allocation: Any, nbytes: int, float_nbytes: int, measured: float, out: _Out
) -> None:
    budget = (
        f"{allocation.target_bpw} bits per weight"
        if allocation.target_bpw is not None
        else f"{allocation.budget_bytes:,} bytes"
    )
    table = _numbers_table(f"per-layer allocation (budget {budget})", "layer", ("candidate", "KL alone", "bytes"))
    for c in allocation.choices:
        table.add_row(c.layer, c.candidate, f"{c.effect:.3g}", f"{c.nbytes:,}")
    out.print(table)
    counts = ", ".join(f"{n} x {c}" for c, n in allocation.counts().items())
    bpw = allocation.bits_per_weight
    out.print(
        f"quantized {model} with a mixed recipe ({counts}): {float_nbytes:,} -> {nbytes:,} bytes "
        f"(predicted {allocation.nbytes:,}){'' if bpw is None else f', {bpw:.3f} bits per weight'}"
    )
    out.print(
        f"KL vs float on the calibration data: predicted (sum of the layers' KL) {allocation.predicted_effect:.4g}, "
        f"measured {measured:.4g}"
    )
    out.print(f"wrote {output} (model.safetensors, quanta.json holding the recipe); reloaded it: outputs bit-identical")
    out.note(f"reproduce it with: quanta quantize {model} -r {output / 'quanta.json'} -o OTHER_DIR (same --calib)")
