"""``quanta report DIR [--ref FLOAT] [--eval FILE]``: (re)generate report.json and report.html beside a saved model.

``quanta quantize`` writes the report after saving (unless ``--no-report``) through :func:`make_report`, recording
where the float model and the evaluation data came from; ``quanta report DIR`` with no options reuses those
sources, so it regenerates the same report.json (the report holds no timestamps and its noise is seeded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _Out, app
from quanta.errors import QuantaError

__all__ = ["make_report", "report_command"]


def make_report(
    directory: Path, float_model: Any, eval_data: Any, sources: dict[str, Any], out: _Out, window: int | None = None
) -> list[str]:
    """Build and write the report of ``directory``; return the lines that say what it holds and where it went."""
    from quanta.report import build_report, write_report

    with out.status("writing the report (quality, robustness, energy, plots)..."):
        report = build_report(directory, float_model, eval_data, window=window, seed=out.seed, sources=sources)
        json_path, html_path = write_report(directory, report)
    lines = []
    q = report.get("quality")
    if q and q["kind"] == "accuracy" and q["float_accuracy"] is not None:
        lines.append(f"report: accuracy {q['accuracy']:.2%} (float {q['float_accuracy']:.2%}), mean KL {q['kl']:.3g}")
    elif q and q["kind"] == "perplexity":
        ref = "" if q["float_perplexity"] is None else f" (float {q['float_perplexity']:.4f}), mean KL {q['kl']:.4g}"
        lines.append(f"report: perplexity {q['perplexity']:.4f}{ref} on {q['tokens']:,} tokens")
    energy = report.get("energy")
    if energy:
        total = energy["quantized"]["total_pj"]
        ratio = energy["float"]["total_pj"] / total
        lines.append(f"report: estimated energy per inference {total / 1e6:.3f} uJ ({ratio:.1f}x less than float)")
    lines.append(f"wrote the report: {json_path} and {html_path}")
    return lines


def _float_model(ref: str, config: dict[str, Any]) -> Any:
    """The float model named by ``--ref``: a transformers directory, or a zoo state_dict (``zoo:NAME=PATH`` or
    the file alone, the zoo name then read from quanta.json)."""
    if config.get("hf"):
        from quanta.cli_lm import _model_and_tokenizer

        if (Path(ref) / "quanta.json").is_file():
            raise QuantaError(f"--ref {ref} is a quantized model; pass the float model's directory.")
        return _model_and_tokenizer(Path(ref))[0]
    from quanta.cli_data import parse_model
    from quanta.zoo import load_pretrained

    if ref.startswith("zoo:"):
        name, weights = parse_model(ref)
    elif config.get("zoo"):
        name, weights = str(config["zoo"]), Path(ref)
    else:
        raise QuantaError(f"{ref}: this model names no zoo architecture; use the Python API (quanta.report).")
    return load_pretrained(name, weights)


def _eval_data(path: Path, config: dict[str, Any], directory: Path, max_tokens: int | None) -> Any:
    """Classifier .npz (x, y) for a zoo model; token ids of a text file for a language model."""
    if config.get("hf"):
        from quanta.lm import tokenize_file
        from quanta.lm.hf import _load_tokenizer, transformers_module

        if path.suffix.lower() == ".npz":
            raise QuantaError(f"{path}: a language model is evaluated on a text file (--eval FILE.txt), not .npz.")
        ids = tokenize_file(path, _load_tokenizer(transformers_module(), directory))
        return ids if max_tokens is None else ids[:max_tokens]
    from quanta.cli_data import images_from, labels_from, read_npz

    arrays = read_npz(path, ("x", "y"))
    x = images_from(arrays["x"], path, str(config.get("zoo")))
    return x, labels_from(arrays["y"], path, len(x))


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="A directory written by quanta quantize / quanta.save.")],
    ref: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The float model: zoo:NAME=PATH or PATH (zoo models), or a transformers directory."),
    ] = None,
    eval_data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--eval", help="Zoo models: an .npz with x and y. Language models: a UTF-8 text file."),
    ] = None,
    seqlen: Annotated[Optional[int], typer.Option(min=2, help="Language models: tokens per window.")] = None,  # noqa: UP045
    max_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Language models: evaluate only the first N tokens."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Regenerate report.json and report.html of a saved model (default: from the sources the last report used)."""
    from quanta.checkpoint import CONFIG_FILE
    from quanta.report import REPORT_JSON

    out = _Out(as_json, quiet, seed)
    with _errors():
        if not (directory / CONFIG_FILE).is_file():
            raise QuantaError(f"{directory} has no {CONFIG_FILE}; pass a directory written by quanta quantize.")
        config = json.loads((directory / CONFIG_FILE).read_text())
        previous: dict[str, Any] = {}
        if (directory / REPORT_JSON).is_file():
            try:
                previous = dict(json.loads((directory / REPORT_JSON).read_text()).get("sources") or {})
            except (ValueError, TypeError, AttributeError):
                previous = {}  # a damaged report is simply rebuilt
        sources: dict[str, Any] = {
            "ref": ref if ref is not None else previous.get("ref"),
            "eval": str(eval_data) if eval_data is not None else previous.get("eval"),
            "seqlen": seqlen if seqlen is not None else previous.get("seqlen"),
            "max_tokens": max_tokens if max_tokens is not None else previous.get("max_tokens"),
        }
        with out.status("loading the float model and the evaluation data..."):
            float_model = None if sources["ref"] is None else _float_model(str(sources["ref"]), config)
            data = None
            if sources["eval"] is not None:
                data = _eval_data(Path(sources["eval"]), config, directory, sources["max_tokens"])
        lines = make_report(directory, float_model, data, sources, out, window=sources["seqlen"])
    out.json(json.loads((directory / REPORT_JSON).read_text()))
    for line in lines:
        out.print(line)
