"""A bar chart of measured per-layer sensitivity: one group of bars per layer, one bar per candidate (a PNG,
written atomically, drawn on a private Agg canvas: no pyplot, no display)."""

from __future__ import annotations

import os
from pathlib import Path

from quanta.errors import QuantaError
from quanta.eval.sensitivity_result import Sensitivity
from quanta.io import atomic_path

__all__ = ["plot_sensitivity"]

_EFFECT_LABELS = {"kl": "KL vs float (nats)", "loss": "loss increase", "accuracy": "accuracy drop"}


def plot_sensitivity(result: Sensitivity, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw each layer's measured effect under each candidate and write a PNG to ``path`` atomically.

    The effect axis is logarithmic when every effect is positive (they span orders of magnitude between 2 and
    8 bits), linear otherwise (an accuracy drop can be zero or negative).

    Raises:
        QuantaError: matplotlib is missing, or the result has no entries.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuantaError("the bar chart needs matplotlib: pip install 'quanta[demo]' (or pass --no-plot).") from exc
    if not result.entries:
        raise QuantaError("the sensitivity result has no entries to plot.")
    layers, candidates = list(result.layers), list(result.candidates)
    fig = Figure(figsize=(max(6.0, 0.32 * len(layers) * max(1, len(candidates)) + 2.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(candidates)
    for k, candidate in enumerate(candidates):
        xs, heights = [], []
        for i, layer in enumerate(layers):
            found = [e for e in result.entries if e.layer == layer and e.candidate == candidate]
            if found:
                xs.append(i - 0.4 + width * (k + 0.5))
                heights.append(found[0].effect)
        ax.bar(xs, heights, width=width, label=candidate)
    if all(e.effect > 0 for e in result.entries):
        ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel(_EFFECT_LABELS.get(result.metric, f"{result.metric} increase"))
    ax.set_title(title or "per-layer sensitivity: one layer quantized, the rest float", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return Path(path)
