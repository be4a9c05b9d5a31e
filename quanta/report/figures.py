"""The report's plots, drawn from report.json's content alone, as PNG bytes (matplotlib on a private Agg canvas).

Each function takes the report dict and returns the PNG's bytes, or ``None`` when the report holds nothing to
draw (no robustness run, no layers). Nothing touches pyplot's global state, so this is safe in a library.
"""

from __future__ import annotations

import io
import itertools
import math
from typing import Any

from quanta.errors import QuantaError

__all__ = ["FIGURES", "bytes_chart", "energy_chart", "error_chart", "histograms", "robustness_chart"]

DPI = 100
COLORS = {"float": "#7f7f7f", "quantized": "#1f77b4", "grid": "#d62728"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuantaError("the report's plots need matplotlib: pip install 'quanta[report]'.") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: same bytes each run
    return buffer.getvalue()


def _legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, where it cannot hide a bar (constrained layout makes room)."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def bytes_chart(report: dict[str, Any]) -> bytes | None:
    """Float vs packed bytes per layer (horizontal bars, log scale) and the totals in the title."""
    layers = report.get("layers") or []
    if not layers:
        return None
    fig = _figure(9.0, 0.9 + 0.32 * len(layers))
    ax = fig.subplots()
    ys = range(len(layers))
    ax.barh([y + 0.2 for y in ys], [r["float_nbytes"] for r in layers], 0.4, color=COLORS["float"], label="float")
    ax.barh([y - 0.2 for y in ys], [r["nbytes"] for r in layers], 0.4, color=COLORS["quantized"], label="quantized")
    ax.set_yticks(list(ys), [r["name"] for r in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter("")  # labelled minor ticks (3x10^3, 4x10^3) collide on a narrow range
    ax.margins(y=0.01)
    ax.set_xlabel("weight bytes (codes + scales), log scale")
    b = report["bytes"]
    ax.set_title(f"model bytes: {b['float']:,} -> {b['quantized']:,} ({b['ratio']:.2f}x smaller)", fontsize=10)
    _legend_outside(ax)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def error_chart(report: dict[str, Any]) -> bytes | None:
    """Per-layer weight SQNR (and output SQNR where measured), in dB."""
    layers = [r for r in report.get("layers") or [] if r.get("weight_sqnr_db") is not None]
    if not layers:
        return None
    fig = _figure(9.0, 0.9 + 0.32 * len(layers))
    ax = fig.subplots()
    ys = list(range(len(layers)))
    finite = [min(r["weight_sqnr_db"], 200.0) for r in layers]
    ax.barh(
        [y - 0.2 for y in ys],
        finite,
        0.4,
        color=COLORS["quantized"],
        label=f"weight SQNR ({layers[0]['error_source']})",
    )
    outputs = [r.get("output_sqnr_db") for r in layers]
    if any(o is not None and math.isfinite(o) for o in outputs):
        vals = [0.0 if o is None or not math.isfinite(o) else o for o in outputs]
        ax.barh([y + 0.2 for y in ys], vals, 0.4, color="#ff7f0e", label="output SQNR (first eval batch)")
    ax.set_yticks(ys, [r["name"] for r in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR vs float (dB, higher is better)")
    ax.set_title("per-layer error", fontsize=10)
    _legend_outside(ax)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def histograms(report: dict[str, Any]) -> bytes | None:
    """One panel per worst layer: its weights' histogram with the quantization levels as vertical lines."""
    panels = report.get("histograms") or []
    if not panels:
        return None
    fig = _figure(9.0, 2.4 * len(panels))
    for ax, h in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        edges, counts = h["bin_edges"], h["counts"]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(edges[:-1], counts, widths, align="edge", color=COLORS["float"], label=f"{h['source']} weights")
        if h.get("levels"):  # one LineCollection: 256 separate axvlines take seconds to draw
            label = f"levels of group {h['levels_group']} ({len(h['levels'])})"
            transform = ax.get_xaxis_transform()  # x in data units, y from 0 to 1 of the axes
            ax.vlines(
                h["levels"], 0, 1, transform=transform, colors=COLORS["grid"], linewidth=0.6, alpha=0.7, label=label
            )
        ax.set_xlim(min(edges[0], *(h.get("levels") or [edges[0]])), max(edges[-1], *(h.get("levels") or [edges[-1]])))
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"{h['layer']}.{h['weight']}  ({h['scheme']})", fontsize=9)
        ax.set_ylabel("count", fontsize=8)
        _legend_outside(ax)
    return _png(fig)


def robustness_chart(report: dict[str, Any]) -> bytes | None:
    """Accuracy against noise sigma and FGSM epsilon, one line per model."""
    r = report.get("robustness")
    if not r:
        return None
    fig = _figure(9.0, 3.4)
    for ax, key, levels, xlabel in zip(
        fig.subplots(1, 2),
        ("noise", "fgsm"),
        (r["sigmas"], r["epsilons"]),
        ("Gaussian noise sigma (input units)", "FGSM epsilon (input units)"),
        strict=True,
    ):
        for label, accs in r[key].items():
            color = COLORS["float"] if label == "float" else COLORS["quantized"]
            ax.plot(levels, [100 * a for a in accs], marker="o", color=color, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{key}: {r['images']:,} images", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def energy_chart(report: dict[str, Any]) -> bytes | None:
    """Stacked bars of estimated energy per inference (compute, weight memory, activation memory) per model."""
    e = report.get("energy")
    if not e:
        return None
    names = [k for k in ("float", "quantized") if e.get(k)]
    fig = _figure(9.0, 2.6)
    ax = fig.subplots()
    left = [0.0] * len(names)
    parts = (("compute_pj", "compute", "#2ca02c"), ("weight_memory_pj", "weights (DRAM)", "#9467bd"),
             ("act_memory_pj", "activations (SRAM)", "#8c564b"))  # fmt: skip
    for key, label, color in parts:
        values = [e[n][key] / 1e6 for n in names]  # pJ -> uJ
        ax.barh(names, values, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("estimated energy per inference (uJ, Horowitz 2014, 45 nm)")
    _legend_outside(ax)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


# (report section, caption, function), in the order the HTML shows them.
FIGURES = (
    ("bytes", "Bytes per layer: float vs packed (codes + scales).", bytes_chart),
    ("error", "Per-layer error against the float model.", error_chart),
    ("histograms", "Weights of the worst layers with the quantization levels (red) of the widest group.", histograms),
    ("robustness", "Accuracy under Gaussian input noise and FGSM, float vs quantized.", robustness_chart),
    ("energy", "Estimated energy per inference by component.", energy_chart),
)
