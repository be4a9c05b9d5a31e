"""A PNG of SQNR vs bit width: measured, exact for a sine, and the 6.02N+1.76 dB rule (``quanta signal sqnr``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from quanta.errors import QuantaError

__all__ = ["plot_sqnr"]


def plot_sqnr(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """Write a two-panel PNG atomically: SQNR (dB) vs bits, and measured minus 6.02N+1.76 vs bits.

    Args:
        path: the PNG to write (a temporary file beside it is renamed into place).
        rows: one dict per width with ``bits``, ``measured_db``, ``exact_db`` and ``theory_db``.
        title: a line above the plot.

    Returns:
        The path written.

    Raises:
        QuantaError: matplotlib is missing (the ``demo`` extra), or there are no rows.

    Example:
        >>> plot_sqnr("/tmp/sqnr.png", [{"bits": 8, "measured_db": 49.8, "exact_db": 49.8, "theory_db": 49.9}])
        '/tmp/sqnr.png'
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuantaError("the plot needs matplotlib: pip install 'quanta[demo]' (or run make demo).") from exc
    from quanta.io import atomic_path

    if not rows:
        raise QuantaError("there are no SQNR rows to plot; pass at least one bit width.")
    n = [r["bits"] for r in rows]
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # a private Agg canvas: no pyplot state, no display
    left, right = fig.subplots(1, 2)
    left.plot(n, [r["theory_db"] for r in rows], "k--", label="6.02N + 1.76")
    left.plot(n, [r["exact_db"] for r in rows], "-", color="tab:blue", label="exact (sine)")
    left.plot(n, [r["measured_db"] for r in rows], "o", color="tab:orange", label="measured")
    left.set(xlabel="bits N", ylabel="SQNR (dB)", title="SQNR vs bits")
    left.legend()
    right.axhline(0.0, color="k", lw=0.8)
    right.plot(n, [r["exact_db"] - r["theory_db"] for r in rows], "-", color="tab:blue", label="exact - theory")
    right.plot(n, [r["measured_db"] - r["theory_db"] for r in rows], "o", color="tab:orange", label="measured - theory")
    right.set(xlabel="bits N", ylabel="dB", title="gap to 6.02N + 1.76")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    target = os.fspath(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)  # the temp name ends .tmp: give the format explicitly
    return target
