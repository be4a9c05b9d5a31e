"""``write_report``: report.json and a self-contained report.html (inline CSS, PNGs as base64 data URIs).

Every string from the report passes through :func:`html.escape`, so a module or file name cannot inject markup.
Both files are written atomically (a temporary file beside the target, renamed into place).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from quanta.errors import QuantaError
from quanta.io import atomic_path
from quanta.report.figures import FIGURES

__all__ = ["REPORT_HTML", "REPORT_JSON", "jsonable", "render_html", "write_report"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 1100px; padding: 16px 24px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; } .muted { color: #666; font-size: 12px; } code { font-size: 12px; }
"""


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (strict JSON) and paths and other objects as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = ",") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return _e(format(value, fmt))


def _table(head: list[str] | None, rows: list[list[tuple[Any, bool]]]) -> str:
    """A table (no header row when ``head`` is None); each cell is (already escaped text, is a number)."""
    th = "" if head is None else "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if n else f"<td>{c}</td>" for c, n in row) + "</tr>" for row in rows
    )
    return f"<table>{th}{body}</table>"


def _summary(r: dict[str, Any]) -> str:
    b, q = r["bytes"], r.get("quality")
    rows = [
        [(_e("model"), False), (_e(r["model"]), False)],
        [(_e("recipe"), False), (_e(r["recipe"]), False)],
        [(_e("bytes (float -> quantized)"), False), (f"{_num(b['float'])} -> {_num(b['quantized'])}", False)],
        [(_e("compression"), False), (f"{_num(b['ratio'], '.2f')}x smaller", False)],
        [(_e("float bytes from"), False), (_e(b["float_source"]), False)],
    ]
    if r.get("left_in_float"):
        rows.append([(_e("left in float"), False), (_e(", ".join(r["left_in_float"])), False)])
    out = _table(None, rows)
    if q:
        metric = "accuracy" if q["kind"] == "accuracy" else "perplexity"
        fmt = ".2%" if metric == "accuracy" else ".4f"
        size = (
            f"{q['images']:,} images" if metric == "accuracy" else f"{q['tokens']:,} tokens, windows of {q['seqlen']}"
        )
        out += "<h2>Quality vs float</h2>" + _table(
            [metric + " (float)", metric + " (quantized)", "mean KL(float || quantized)", "top-1 agreement", "data"],
            [[(_num(q[f"float_{metric}"], fmt), True), (_num(q[metric], fmt), True), (_num(q["kl"], ".5f"), True),
              (_num(q["top1_agreement"], ".2%"), True), (_e(f"{size}, sha256 {q['sha256'][:16]}..."), False)]],
        )  # fmt: skip
    return out


def _layers(r: dict[str, Any]) -> str:
    head = ["module", "class", "scheme", "input", "method", "kernel", "bytes", "float bytes", "bits/w",
            "weight rel. MSE", "weight SQNR dB", "output SQNR dB"]  # fmt: skip
    rows = [
        [(_e(x["name"]), False), (_e(x["class"]), False), (_e(x["scheme"]), False),
         (_e(x["activation"] or "float"), False), (_e(x["method"] or "?"), False), (_e(x["kernel"]), False),
         (_num(x["nbytes"]), True), (_num(x["float_nbytes"]), True), (_num(x["bits_per_weight"], ".2f"), True),
         (_num(x["weight_rel_mse"], ".3g"), True), (_num(x["weight_sqnr_db"], ".1f"), True),
         (_num(x.get("output_sqnr_db"), ".1f"), True)]
        for x in r["layers"]
    ]  # fmt: skip
    source = r["layers"][0]["error_source"] if r["layers"] else None
    return _table(head, rows) + f'<p class="muted">weight error source: {_e(source or "none")}</p>'


def _robustness(r: dict[str, Any]) -> str:
    rob = r.get("robustness")
    if not rob:
        return '<p class="muted">not measured (needs classifier evaluation data: --eval FILE.npz)</p>'
    out = ""
    for key, levels, what in (("noise", rob["sigmas"], "sigma"), ("fgsm", rob["epsilons"], "epsilon")):
        head = ["model", *(f"{what} {v:g}" for v in levels)]
        rows = [[(_e(k), False), *((_num(a, ".2%"), True) for a in accs)] for k, accs in rob[key].items()]
        out += f"<p>{_e('Gaussian input noise' if key == 'noise' else 'FGSM')}</p>" + _table(head, rows)
    return out + f'<p class="muted">{rob["images"]:,} images; noise seeded with {rob["seed"]}</p>'


def _energy(r: dict[str, Any]) -> str:
    e = r.get("energy")
    if not e:
        return '<p class="muted">not estimated (no input shape known)</p>'
    names = [k for k in ("float", "quantized") if e.get(k)]
    precisions = sorted({p for n in names for p, v in e[n]["macs_by_precision"].items() if v})
    head = ["model", *(f"MACs {p}" for p in precisions), "compute pJ", "weights pJ", "activations pJ", "total uJ"]
    rows = [
        [(_e(n), False), *((_num(e[n]["macs_by_precision"].get(p, 0)), True) for p in precisions),
         (_num(e[n]["compute_pj"], ",.0f"), True), (_num(e[n]["weight_memory_pj"], ",.0f"), True),
         (_num(e[n]["act_memory_pj"], ",.0f"), True), (_num(e[n]["total_pj"] / 1e6, ".3f"), True)]
        for n in names
    ]  # fmt: skip
    table = _table(["operation", "pJ"], [[(_e(k), False), (_num(v, "g"), True)] for k, v in e["table_pj"].items()])
    uncounted = e["quantized"].get("uncounted") or []
    return (
        _table(head, rows)
        + f'<p class="muted">per-operation energies: {_e(e["source"])}; {_e(e["assumptions"])}.'
        + (f" Not counted: {_e(', '.join(uncounted))}." if uncounted else "")
        + f"</p>{table}"
    )


def _provenance(r: dict[str, Any]) -> str:
    flat: list[tuple[str, Any]] = []
    for k, v in r["provenance"].items():
        flat += [(f"{k}.{kk}", vv) for kk, vv in v.items()] if isinstance(v, dict) else [(k, v)]
    flat += [(f"source.{k}", v) for k, v in r.get("sources", {}).items()]
    return _table(
        ["what", "value"], [[(_e(k), False), (f"<code>{_e('-' if v is None else v)}</code>", False)] for k, v in flat]
    )


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, every plot a base64 PNG data URI).

    Without matplotlib the page is written without plots (and a warning says how to get them).
    """
    figures: dict[str, str] = {}
    for key, caption, draw in FIGURES:
        try:
            png = draw(report)
        except QuantaError as exc:  # matplotlib missing: tables only
            warnings.warn(str(exc), stacklevel=2)
            break
        if png:
            data = base64.b64encode(png).decode("ascii")
            alt = _e(caption)
            figures[key] = (
                f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
            )
    title = f"quanta report: {report['model']} with {report['recipe']}"
    sections = [
        f"<h1>{_e(title)}</h1><p class='muted'>{_e(report['model_dir'])}</p>",
        "<h2>Summary</h2>" + _summary(report),
        "<h2>Bytes</h2>" + figures.get("bytes", ""),
        "<h2>Layers</h2>" + _layers(report) + figures.get("error", ""),
        "<h2>Worst layers: weights and quantization levels</h2>" + figures.get("histograms", ""),
        "<h2>Robustness</h2>" + _robustness(report) + figures.get("robustness", ""),
        "<h2>Energy estimate per inference</h2>" + _energy(report) + figures.get("energy", ""),
        "<h2>Provenance</h2>" + _provenance(report),
    ]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(directory: str | os.PathLike[str], report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory``, each atomically; return their paths.

    Raises:
        QuantaError: ``directory`` does not exist.
    """
    target = Path(directory)
    if not target.is_dir():
        raise QuantaError(f"{target} is not a directory; pass the model directory the report belongs to.")
    data = jsonable(report)
    json_path, html_path = target / REPORT_JSON, target / REPORT_HTML
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(data), encoding="utf-8")
    return json_path, html_path
