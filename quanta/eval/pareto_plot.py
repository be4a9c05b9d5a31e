"""A PNG of a sweep: quality against model bytes and against latency, the Pareto front marked (a line through it
and highlighted, labelled points), the float model as a reference line. Drawn on a private Agg canvas (no pyplot,
no display), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from quanta.errors import QuantaError
from quanta.eval.plot import _place_labels
from quanta.eval.sweep_result import SweepResult
from quanta.io import atomic_path

__all__ = ["plot_sweep"]

_QUALITY_LABELS = {"accuracy": "accuracy (%), higher is better", "perplexity": "perplexity, lower is better"}


def plot_sweep(result: SweepResult, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw ``result`` in two panels (quality vs bytes, log scale; quality vs latency) and write a PNG to ``path``.

    Points are coloured by method; front points are larger, ringed in black, joined by a line and labelled with
    their recipe. A perplexity axis is logarithmic when it spans more than a factor of 10 (2-bit RTN can be far
    off). Accuracy is shown in percent.

    Raises:
        QuantaError: matplotlib is missing, or the result has no points.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuantaError("the sweep plot needs matplotlib: pip install 'quanta[demo]' (or leave out --plot).") from exc
    if not result.points:
        raise QuantaError("the sweep result has no points to plot.")
    scale = 100.0 if result.metric == "accuracy" else 1.0
    methods = sorted({p.method for p in result.points})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = zip(fig.subplots(1, 2), ("bytes", "latency"), strict=True)
    for ax, by in panels:
        cost = (lambda p: float(p.nbytes)) if by == "bytes" else (lambda p: p.latency_ms)
        front = result.front(by)  # type: ignore[arg-type]
        on_front = {p.recipe for p in front}
        for method in methods:
            rest = [p for p in result.points if p.method == method and p.recipe not in on_front]
            ax.scatter([cost(p) for p in rest], [scale * p.quality for p in rest], s=28, color=colours[method],
                       alpha=0.6, label=method, zorder=2)  # fmt: skip
        ax.plot([cost(p) for p in front], [scale * p.quality for p in front], color="black", lw=1.2, zorder=3,
                label="Pareto front")  # fmt: skip
        for p in front:
            ax.scatter(cost(p), scale * p.quality, s=70, color=colours[p.method], edgecolors="black", linewidths=1.4,
                       zorder=4)  # fmt: skip
        ref = result.reference
        ax.axhline(scale * ref.quality, color="grey", ls="--", lw=1.0, zorder=1,
                   label=f"float ({ref.nbytes:,} B, {ref.latency_ms:.2g} ms)")  # fmt: skip
        values = [p.quality for p in result.points] + [ref.quality]
        if result.metric != "accuracy" and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        if by == "bytes":
            ax.set_xscale("log")
        ax.autoscale_view()
        _place_labels(ax, fig.dpi, [(p.recipe, cost(p), scale * p.quality) for p in front])
        ax.set_xlabel("model bytes (log scale)" if by == "bytes" else "latency (ms, median, 1 thread)")
        ax.set_ylabel(_QUALITY_LABELS.get(result.metric, result.metric))
        ax.set_title(f"{result.metric} vs {by}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return Path(path)
