"""The result of :func:`quanta.eval.sweep.sweep`: one measured point per recipe, the float reference, the skipped
combinations with their reasons, and the Pareto fronts (quality vs bytes, quality vs latency)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from quanta.errors import QuantaError
from quanta.eval.pareto import pareto_front

__all__ = ["SweepPoint", "SweepResult"]

RESULT_VERSION = 1


@dataclass(frozen=True)
class SweepPoint:
    """One recipe's model (or the float reference, ``recipe="float"``).

    ``nbytes``: :func:`quanta.model_nbytes` of the whole model; ``bits_per_weight``: 8 x the quantized layers'
    bytes / the weights they hold (NaN for float); ``quality``: the sweep's metric; ``kl``: mean KL divergence
    from the float model (nats); ``latency_ms``: median forward pass on the sweep's fixed input, one thread;
    ``speedup``: the float model's median / this one's, timed alternately in the same run; ``quantize_seconds``:
    wall time of quantizing it. ``bits``, ``method``, ``group``: the main rule's weight bits, method and group size
    (``None``: per channel).
    """

    recipe: str
    bits: int | None
    method: str
    group: int | None
    nbytes: int
    bits_per_weight: float
    quality: float
    kl: float
    latency_ms: float
    speedup: float
    quantize_seconds: float


@dataclass(frozen=True)
class SweepResult:
    """Every measured point of a sweep, the float reference and the skipped combinations ``(recipe, why)``."""

    metric: str
    higher_is_better: bool
    reference: SweepPoint
    points: tuple[SweepPoint, ...]
    skipped: tuple[tuple[str, str], ...]

    def front(self, by: Literal["bytes", "latency"] = "bytes") -> list[SweepPoint]:
        """The points on the Pareto front of quality vs ``by`` (bytes or latency), in increasing cost.

        Raises:
            QuantaError: ``by`` is neither ``"bytes"`` nor ``"latency"``.
        """
        if by not in ("bytes", "latency"):
            raise QuantaError(f"front(by={by!r}): choose 'bytes' or 'latency'.")
        costs = [float(p.nbytes) if by == "bytes" else p.latency_ms for p in self.points]
        quality = [p.quality for p in self.points]
        return [self.points[i] for i in pareto_front(costs, quality, higher_is_better=self.higher_is_better)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: every point, with ``front_bytes`` / ``front_latency`` flags; NaN as ``None``."""
        on_bytes = {p.recipe for p in self.front("bytes")}
        on_latency = {p.recipe for p in self.front("latency")}

        def clean(point: SweepPoint) -> dict[str, Any]:
            data = asdict(point)
            return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()}

        return {
            "result_version": RESULT_VERSION,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "reference": clean(self.reference),
            "points": [
                clean(p) | {"front_bytes": p.recipe in on_bytes, "front_latency": p.recipe in on_latency}
                for p in self.points
            ],
            "skipped": [{"recipe": r, "reason": why} for r, why in self.skipped],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
