"""``quanta sensitivity MODEL --calib FILE``: per-layer sensitivity to each candidate recipe, with proxies.

MODEL is a transformers directory (or a quanta directory with config.json) with ``--calib FILE.txt``, a quanta
directory of a zoo model, or ``zoo:NAME=PATH``, both with ``--calib FILE.npz`` (array ``x``). The metric is the
loss on ``--ppl FILE.txt`` (language models), the accuracy on ``--accuracy FILE.npz`` (arrays ``x`` and ``y``),
or, with neither, the KL divergence from the float model on the calibration inputs; ``--metric`` overrides it.
Prints a table per (layer, candidate) and the proxies' rank correlations, writes a bar chart (``--plot``) and,
with ``-o``, the result as JSON (:meth:`quanta.eval.sensitivity_result.Sensitivity.to_json`).
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

__all__ = ["sensitivity_command"]

_EFFECT = {"kl": "KL", "loss": "Δ loss", "accuracy": "acc drop"}


def _num(value: float | None, fmt: str = ".3g") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else format(value, fmt)


def _language_model(model: Path, calib: Path, ppl: Path | None, accuracy: Path | None, opts: dict[str, Any]) -> Any:
    """(model, calibration batches, eval data, window) for a transformers directory."""
    from quanta.cli_lm import lm_inputs

    if accuracy is not None:
        raise QuantaError("--accuracy is for image classifiers; score a language model with --ppl FILE.txt.")
    lm = lm_inputs(model, calib, ppl, opts)
    return lm.net, lm.batches, lm.eval_ids, lm.window


def _image_model(model: str, calib: Path, ppl: Path | None, accuracy: Path | None, opts: dict[str, Any]) -> Any:
    """(model, calibration batches, eval data, None) for zoo:NAME=PATH or a quanta directory of a zoo model."""
    from quanta.cli_data import calibration_batches, image_model, labelled_images

    if ppl is not None:
        raise QuantaError("--ppl is for language models; score an image classifier with --accuracy FILE.npz.")
    net, name = image_model(model)
    batches = calibration_batches(calib, name, opts["batch_size"], opts["max_batches"])
    return net, batches, None if accuracy is None else labelled_images(accuracy, name), None


@app.command("sensitivity")
def sensitivity_command(
    model: Annotated[
        str,
        typer.Argument(help="A transformers or quanta directory, or zoo:NAME=PATH (a zoo model and its weights)."),
    ],
    calib: Annotated[Path, typer.Option(help="Language models: a UTF-8 text file; zoo models: an .npz with x.")],
    candidates: Annotated[
        str, typer.Option("--candidates", "-c", help="Comma-separated presets or recipe JSON files to try per layer.")
    ] = "w2a16-g32,w4a16-g32,w8a16",
    ppl: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--ppl", help="Language models: a text file; the metric is the loss (mean NLL) on it."),
    ] = None,
    accuracy: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--accuracy", help="Zoo models: an .npz with x and y; the metric is the accuracy drop."),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="auto (loss with --ppl, accuracy with --accuracy, else kl), kl, loss or accuracy.")
    ] = "auto",
    layers: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Comma-separated globs on module names to measure (default: every quantizable layer)."),
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
    plot: Annotated[Path, typer.Option(help="The bar chart (PNG) to write.")] = Path("sensitivity.png"),
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write the bar chart.")] = False,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Also write the result as JSON to this file."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Quantize one layer at a time with each candidate: measured effect, proxies, bytes, rank correlations."""
    from quanta.eval.sensitivity import sensitivity
    from quanta.eval.sensitivity_plot import plot_sensitivity
    from quanta.io import atomic_path

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    opts = {"seqlen": seqlen, "nsamples": nsamples, "max_tokens": max_tokens, "seed": seed}
    opts |= {"batch_size": batch_size, "max_batches": max_batches}
    with _errors():
        names = [c.strip() for c in candidates.split(",") if c.strip()]
        if not names:
            raise QuantaError("--candidates is empty; give presets such as w2a16-g32,w8a16.")
        if metric not in ("auto", "kl", "loss", "accuracy"):
            raise QuantaError(f"--metric {metric!r} is not one of auto, kl, loss, accuracy.")
        is_lm = is_lm_directory(model)
        with out.status(f"loading {model}..."):
            if is_lm:
                net, batches, eval_data, window = _language_model(Path(model), calib, ppl, accuracy, opts)
            else:
                net, batches, eval_data, window = _image_model(model, calib, ppl, accuracy, opts)
        chosen = metric if metric != "auto" else "loss" if ppl else "accuracy" if accuracy else "kl"
        if chosen in ("loss", "accuracy") and eval_data is None:
            option = "--ppl FILE.txt" if is_lm else "--accuracy FILE.npz (arrays x and y)"
            raise QuantaError(f"--metric {chosen} needs an evaluation set: pass {option}.")
        result = sensitivity(
            net,
            names,
            batches,
            chosen,
            eval_data=eval_data,
            layers=None if layers is None else [p.strip() for p in layers.split(",") if p.strip()],
            window=window,
            batch_size=batch_size,
            progress=not out.quiet,
        )
        plot_path = None if no_plot else plot_sensitivity(result, plot, title=f"{model}: per-layer sensitivity")
        if output is not None:
            with atomic_path(output) as tmp:
                tmp.write_text(result.to_json())
    data = result.to_dict()
    data |= {"model": model, "plot": plot_path, "output": output, "seconds": time.perf_counter() - start}
    out.json(data)
    effect = _EFFECT.get(result.metric, f"Δ {result.metric}")
    out.print(
        f"{model}: one layer quantized at a time with each of {', '.join(result.candidates)}, the rest float; "
        f"{result.metric} of the model as loaded: {result.float_value:.6g}"
    )
    table = _numbers_table(
        "per-layer sensitivity",
        "layer",
        ("candidate", effect, "wSQNR dB", "H diag", "outlier", "bytes"),
    )
    for e in result.entries:
        table.add_row(
            e.layer,
            e.candidate,
            _num(e.effect),
            _num(e.weight_sqnr_db, ".1f"),
            _num(e.hessian_diag),
            _num(e.outlier_ratio, ".1f"),
            f"{e.nbytes:,}",
        )
    out.print(table)
    columns = (*result.candidates, "all pairs")
    ranks = _numbers_table("Spearman rank correlation of each proxy with the measured effect", "proxy", columns)
    per = [result.rank_correlation(c) for c in result.candidates] + [result.rank_correlation()]
    for proxy in per[0]:
        ranks.add_row(proxy, *(_num(r[proxy], "+.2f") for r in per))
    out.print(ranks)
    out.note(
        "H diag: 1/2 sum H_jj dW^2 with H = 2 X^T X / n from the calibration inputs (H trace and float bytes: "
        "--json); bytes: the layer quantized. Correlation +1: the proxy orders layers as their measured damage "
        "(weight SQNR negated); n/a: fewer than 3 points or a constant side."
    )
    if plot_path is not None:
        out.print(f"wrote the bar chart {plot_path}")
    if output is not None:
        out.print(f"wrote {output} (Sensitivity.to_json)")
    out.note(f"{len(result.entries)} measurements in {time.perf_counter() - start:.1f} s")
