"""A PNG of accuracy against model bytes, one panel per model, written atomically (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from quanta.errors import QuantaError

__all__ = ["plot_accuracy_vs_bytes"]

Point = tuple[str, int, float]  # (recipe, bytes, accuracy in [0, 1])


def plot_accuracy_vs_bytes(panels: Mapping[str, Sequence[Point]], path: str | os.PathLike[str]) -> Path:
    """Draw each panel's points (bytes on a log axis, accuracy in %) and write a PNG to ``path`` atomically.

    The figure is drawn on a private Agg canvas (no pyplot, no display needed), saved to a temporary file beside
    ``path`` and renamed into place, so a reader never sees a half-written image.

    Raises:
        QuantaError: matplotlib is missing, or there is nothing to plot.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuantaError("the plot needs matplotlib: pip install 'quanta[demo]' (or run make demo).") from exc
    panels = {title: points for title, points in panels.items() if points}
    if not panels:
        raise QuantaError("there are no results to plot.")
    fig = Figure(figsize=(5.0 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (title, points) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True):
        labels: dict[tuple[float, float], list[str]] = {}  # points that would overlap share one label
        for recipe, nbytes, acc in points:
            is_float = recipe == "float"
            ax.scatter(nbytes, 100 * acc, marker="*" if is_float else "o", s=120 if is_float else 40, zorder=3)
            labels.setdefault((round(math.log10(nbytes), 1), round(100 * acc, 1)), []).append(recipe)
        for _, nbytes, acc in points:
            names = labels.pop((round(math.log10(nbytes), 1), round(100 * acc, 1)), None)
            if names:
                where = (nbytes, 100 * acc)
                ax.annotate(", ".join(names), where, textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("model bytes (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
