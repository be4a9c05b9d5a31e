"""``quanta sweep MODEL --bits 2,3,4,8 --methods rtn,gptq --groups 32,ch``: the quantization-level trade-off.

Every bits x method x group preset (``w{b}a16[-g{N}][-{method}]``, plus any ``--presets``) quantizes a fresh copy
of the float model; each point's bytes, bits per weight, quality, KL vs float, latency and quantize time go in a
table whose Pareto-front rows are marked, and in a plot of quality vs bytes and vs latency (``--plot``).

MODEL is a transformers directory (quality: perplexity on ``--ppl FILE.txt``; ``--calib FILE.txt`` windows,
quantized block by block), or ``zoo:NAME=PATH`` / a quanta directory of a zoo model (quality: accuracy on
``--eval FILE.npz`` with ``x`` and ``y``; ``--calib FILE.npz`` with ``x``). Without ``--calib``, methods that learn
from data are skipped, with the reason shown.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _numbers_table, _Out, app
from quanta.cli_lm import is_lm_directory
from quanta.errors import QuantaError

__all__ = ["sweep_command"]


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise QuantaError(f"{option} {text!r}: give comma-separated whole numbers, e.g. 2,3,4,8.") from exc
    if not values:
        raise QuantaError(f"{option} is empty; give comma-separated whole numbers, e.g. 2,3,4,8.")
    return values


def _groups(text: str) -> list[int | None]:
    """``32,128,ch`` -> ``[32, 128, None]`` (``ch``: per output channel)."""
    out: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part in ("ch", "channel"):
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise QuantaError(f"--groups {text!r}: each entry is a positive group size or 'ch' (per channel).")
    if not out:
        raise QuantaError("--groups is empty; give group sizes and/or 'ch', e.g. 32,128,ch.")
    return out


def _language_model(
    model: Path, calib: Path | None, ppl: Path | None, eval_npz: Path | None, opts: dict[str, Any]
) -> Any:
    """(model, calibration batches or None, evaluation, quantize function) for a transformers directory."""
    import quanta
    from quanta.cli_lm import lm_inputs
    from quanta.eval.sweep_eval import perplexity_evaluation
    from quanta.lm import quantize_sequential

    if eval_npz is not None:
        raise QuantaError("--eval FILE.npz is for image classifiers; score a language model with --ppl FILE.txt.")
    if ppl is None:
        raise QuantaError(f"the evaluation set is missing: pass --ppl FILE.txt (text to score {model} on).")
    lm = lm_inputs(model, calib, ppl, opts)
    evaluation = perplexity_evaluation(lm.net, lm.eval_ids, lm.window, batch_size=opts["batch_size"])
    if lm.batches is None:
        return lm.net, None, evaluation, lambda m, r, c: quanta.quantize(m, r, c)
    # block by block, each block calibrated on the quantized blocks' outputs, as `quanta quantize` does
    return lm.net, lm.batches, evaluation, quantize_sequential


def _image_model(spec: str, calib: Path | None, ppl: Path | None, eval_npz: Path | None, opts: dict[str, Any]) -> Any:
    """(model, calibration batches or None, evaluation, None) for zoo:NAME=PATH or a quanta zoo directory."""
    from quanta.cli_data import calibration_batches, image_model, labelled_images
    from quanta.eval.sweep_eval import accuracy_evaluation

    if ppl is not None:
        raise QuantaError("--ppl is for language models; score an image classifier with --eval FILE.npz.")
    if eval_npz is None:
        raise QuantaError(f"the evaluation set is missing: pass --eval FILE.npz (arrays x and y) to score {spec} on.")
    net, name = image_model(spec)
    evaluation = accuracy_evaluation(net, *labelled_images(eval_npz, name), opts["batch_size"])
    batches = None
    if calib is not None:
        batches = calibration_batches(calib, name, opts["batch_size"], opts["max_batches"])
    return net, batches, evaluation, None


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None or math.isnan(value) else format(value, fmt)


@app.command("sweep")
def sweep_command(
    model: Annotated[
        str, typer.Argument(help="A transformers or quanta directory, or zoo:NAME=PATH (a zoo model and its weights).")
    ],
    bits: Annotated[str, typer.Option(help="Comma-separated weight bit widths.")] = "2,3,4,8",
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (see quanta recipes), e.g. rtn,gptq,hqq.")
    ] = "rtn",
    groups: Annotated[str, typer.Option(help="Comma-separated group sizes; 'ch' = per output channel.")] = "32,ch",
    presets: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Extra comma-separated presets to add to the grid (e.g. vq4x256,nf4-g64)."),
    ] = None,
    calib: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Language models: a UTF-8 text file; zoo models: an .npz with x. Needed by gptq, awq..."),
    ] = None,
    ppl: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--ppl", help="Language models: the text file whose perplexity is the quality."),
    ] = None,
    eval_npz: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--eval", help="Zoo models: an .npz with x and y; the quality is the accuracy."),
    ] = None,
    nsamples: Annotated[int, typer.Option(min=1, help="Language models: calibration windows.")] = 16,
    seqlen: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Language models: tokens per window (default: min(2048, the context))."),
    ] = None,
    max_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Language models: score only the first N tokens of --ppl."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images (or windows) per forward pass.")] = 64,
    max_batches: Annotated[int, typer.Option(min=1, help="Zoo models: calibrate on at most this many batches.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Timed forward passes per point (the median is kept).")] = 5,
    plot: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the quality-vs-bytes and quality-vs-latency plot (PNG) here."),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Also write the table as JSON (SweepResult.to_json) to this file."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Quantize with every bits x method x group combination: bytes, quality, KL, latency, and the Pareto front."""
    from quanta.eval.pareto_plot import plot_sweep
    from quanta.eval.sweep import sweep, sweep_grid
    from quanta.io import atomic_path

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    opts = {"seqlen": seqlen, "nsamples": nsamples, "max_tokens": max_tokens, "seed": seed}
    opts |= {"batch_size": batch_size, "max_batches": max_batches}
    with _errors():
        method_names = [m.strip() for m in methods.split(",") if m.strip()]
        grid = sweep_grid(_ints(bits, "--bits"), method_names, _groups(groups))
        grid += [p.strip() for p in (presets or "").split(",") if p.strip() and p.strip() not in grid]
        is_lm = is_lm_directory(model)
        with out.status(f"loading {model}..."):
            if is_lm:
                net, batches, evaluation, quantize_fn = _language_model(Path(model), calib, ppl, eval_npz, opts)
            else:
                net, batches, evaluation, quantize_fn = _image_model(model, calib, ppl, eval_npz, opts)
        if out.quiet:
            result = sweep(net, grid, batches, evaluation, quantize_fn=quantize_fn, rounds=rounds)
        else:
            from quanta.cli import progress_console

            with progress_console.status("sweeping...") as status:
                result = sweep(
                    net, grid, batches, evaluation, quantize_fn=quantize_fn, rounds=rounds,
                    on_point=lambda name: status.update(f"sweeping: {name}"),
                )  # fmt: skip
        plot_path = None if plot is None else plot_sweep(result, plot, title=f"{model}: quantization sweep")
        if output is not None:
            with atomic_path(output) as tmp:
                tmp.write_text(result.to_json())
    data = result.to_dict() | {"model": model, "grid": grid, "plot": plot_path, "output": output}
    data["seconds"] = time.perf_counter() - start
    out.json(data)
    accuracy = result.metric == "accuracy"
    quality = (lambda v: f"{v:.2%}") if accuracy else (lambda v: f"{v:.3f}")
    ref = result.reference
    on_bytes, on_latency = {p.recipe for p in result.front("bytes")}, {p.recipe for p in result.front("latency")}
    table = _numbers_table(
        f"{model}: {result.metric} vs size and speed ({len(result.points)} points)",
        "recipe",
        ("front", "bytes", "bpw", "acc" if accuracy else "ppl", "KL", "ms", "speed", "q s"),
    )
    table.add_row("float", "", f"{ref.nbytes:,}", "32.00", quality(ref.quality), "0", f"{ref.latency_ms:.2f}",
                  "1.00x", "")  # fmt: skip
    for p in result.points:
        mark = " ".join(m for m, on in (("B", p.recipe in on_bytes), ("L", p.recipe in on_latency)) if on)
        table.add_row(
            p.recipe, mark, f"{p.nbytes:,}", _num(p.bits_per_weight, ".2f"), quality(p.quality), _num(p.kl, ".2g"),
            f"{p.latency_ms:.2f}", f"{p.speedup:.2f}x", f"{p.quantize_seconds:.1f}",
        )  # fmt: skip
    out.print(table)
    for recipe, why in result.skipped:
        out.print(f"skipped {recipe}: {why}")
    out.note(
        "front: B = on the Pareto front of quality vs bytes, L = of quality vs latency. bytes = quanta.model_nbytes; "
        "bpw = 8 x quantized-layer bytes / their weights; KL vs float in nats; ms: median forward pass on a fixed "
        "input, 1 thread, alternating with the float model (speed = float ms / ms); q s: seconds to quantize."
    )
    if plot_path is not None:
        out.print(f"wrote the plot {plot_path}")
    if output is not None:
        out.print(f"wrote {output} (SweepResult.to_json)")
    out.note(f"{len(result.points)} points, {len(result.skipped)} skipped, in {time.perf_counter() - start:.1f} s")
