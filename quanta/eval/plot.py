"""A PNG of accuracy against model bytes, one panel per model, written atomically (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quanta.errors import QuantaError
from quanta.io import atomic_path

__all__ = ["plot_accuracy_vs_bytes"]

Point = tuple[str, int, float]  # (recipe, bytes, accuracy in [0, 1])


def _place_labels(ax: Any, dpi: float, labels: list[tuple[str, float, float]]) -> None:
    """Annotate each point to its right, moving a label up or down (in 11-point steps) until it overlaps no label
    placed before it; the most accurate points are placed first, so they keep the spot next to them."""
    points_per_pixel = 72.0 / dpi
    placed: list[tuple[float, float, float, float]] = []  # label boxes in points (x0, y0, x1, y1)
    top = float(ax.bbox.y1) * points_per_pixel if hasattr(ax, "bbox") else None
    for text, x, y in sorted(labels, key=lambda item: (-item[2], item[1])):
        px, py = (float(v) * points_per_pixel for v in ax.transData.transform((x, y)))
        width, height = 5.0 * len(text), 9.0  # fontsize 8: about 5 points a character
        for step in range(25):
            dy = 3.0 + 11.0 * ((step + 1) // 2) * (-1 if step % 2 else 1)  # 3, -8, 14, -19, 25, ...
            box = (px + 4, py + dy, px + 4 + width, py + dy + height)
            inside = top is None or box[3] <= top  # a label above the axes would run into the title
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, dy), fontsize=8)


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
        first: dict[tuple[float, float], tuple[float, float]] = {}
        for recipe, nbytes, acc in points:
            is_float = recipe == "float"
            ax.scatter(nbytes, 100 * acc, marker="*" if is_float else "o", s=120 if is_float else 40, zorder=3)
            key = (round(math.log10(nbytes), 1), round(100 * acc, 1))
            labels.setdefault(first.setdefault(key, (nbytes, 100 * acc)), []).append(recipe)
        ax.set_xscale("log")
        ax.autoscale_view()
        _place_labels(ax, fig.dpi, [(", ".join(names), nbytes, acc) for (nbytes, acc), names in labels.items()])
        ax.set_xlabel("model bytes (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return target
