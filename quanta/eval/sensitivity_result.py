"""The result of :func:`quanta.sensitivity`: per (layer, candidate) the measured effect, the proxies and the bytes.

Bytes follow :func:`quanta.model_nbytes`: a model whose layers ``L`` are quantized with candidates ``c(L)`` (the
others float) holds ``float_nbytes - sum_L layer_float_nbytes(L) + sum_L nbytes(L, c(L))`` bytes, which is what a
mixed-precision allocation under a byte budget needs, together with ``effect``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from quanta.errors import CorruptDataError, QuantaError
from quanta.eval.proxies import PROXIES

__all__ = ["LayerSensitivity", "Sensitivity", "spearman"]

RESULT_VERSION = 1


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer quantized with one candidate, every other layer float.

    ``value``: the metric of that model; ``effect``: the damage against float (``value - float`` for losses and
    KL, ``float - value`` for accuracy), so larger is always worse. ``nbytes`` / ``float_nbytes``: the layer's
    bytes quantized / in float; ``weight_nbytes`` / ``weight_numel``: its packed weights' bytes and count.
    Proxies as in :mod:`quanta.eval.proxies` (``None`` where one does not apply).
    """

    layer: str
    kind: str
    candidate: str
    scheme: str
    value: float
    effect: float
    nbytes: int
    float_nbytes: int
    weight_sqnr_db: float | None
    hessian_trace: float | None
    hessian_diag: float | None
    outlier_ratio: float | None
    # The packed weights alone (codes + scales + zeros + codebooks, no bias) and their count: bits per weight.
    # None in results written before they were recorded.
    weight_nbytes: int | None = None
    weight_numel: int | None = None


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks; ``nan`` when undefined
    (fewer than 3 pairs, or a constant side).

    Example:
        >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 5.0])
        -0.2
    """
    if len(x) != len(y):
        raise QuantaError(f"spearman needs two lists of one length, got {len(x)} and {len(y)}.")
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return math.nan if denom == 0.0 else round(float((dx * dy).sum()) / denom, 12)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class Sensitivity:
    """Every measured (layer, candidate) pair, and what the float model scored.

    ``metric``: ``"kl"``, ``"loss"``, ``"accuracy"`` or a callable's name; ``float_value``: the float model's
    metric; ``float_nbytes``: ``quanta.model_nbytes`` of the float model; ``layers`` / ``candidates`` in the
    order measured.
    """

    metric: str
    higher_is_better: bool
    float_value: float
    float_nbytes: int
    layers: tuple[str, ...]
    candidates: tuple[str, ...]
    entries: tuple[LayerSensitivity, ...]

    def entry(self, layer: str, candidate: str) -> LayerSensitivity:
        """The entry of ``layer`` under ``candidate``.

        Raises:
            QuantaError: that pair was not measured (the candidate keeps the layer float, or a typo).
        """
        for e in self.entries:
            if e.layer == layer and e.candidate == candidate:
                return e
        raise QuantaError(
            f"no entry for layer {layer!r} with candidate {candidate!r}; layers: {list(self.layers)[:6]}, "
            f"candidates: {list(self.candidates)}."
        )

    def rank_correlation(self, candidate: str | None = None) -> dict[str, float]:
        """Spearman's correlation of each proxy with the measured effect, oriented so that +1 means the proxy
        ranks the layers exactly as their measured damage (weight SQNR is negated: high SQNR predicts little).

        Args:
            candidate: rank the layers under this candidate only; ``None`` pools every (layer, candidate) pair.

        Returns:
            ``{proxy: rho}``, ``nan`` where fewer than 3 entries have the proxy or a side is constant.
        """
        chosen = [e for e in self.entries if candidate is None or e.candidate == candidate]
        if candidate is not None and not chosen:
            raise QuantaError(f"candidate {candidate!r} was not measured; candidates: {list(self.candidates)}.")
        result = {}
        for proxy, sign in PROXIES.items():
            pairs = [(sign * v, e.effect) for e in chosen if (v := getattr(e, proxy)) is not None and math.isfinite(v)]
            result[proxy] = spearman([p for p, _ in pairs], [m for _, m in pairs])
        return result

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (non-finite numbers as ``None``), with the rank correlations for reading."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "entries"}
        data["layers"], data["candidates"] = list(self.layers), list(self.candidates)
        data["entries"] = [{k: _finite(v) for k, v in asdict(e).items()} for e in self.entries]
        data["rank_correlation"] = {
            "all": {k: _finite(v) for k, v in self.rank_correlation().items()},
            **{c: {k: _finite(v) for k, v in self.rank_correlation(c).items()} for c in self.candidates},
        }
        return {"sensitivity_version": RESULT_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        """Read back :meth:`to_json` (the rank correlations are recomputed, not read; an infinite SQNR, written
        as ``null``, reads back as ``None``).

        Raises:
            CorruptDataError: not valid JSON, a newer version, or missing fields.
        """
        try:
            data = json.loads(text)
            version = data["sensitivity_version"]
            if not isinstance(version, int) or version > RESULT_VERSION:
                raise CorruptDataError(f"sensitivity version {version!r} is not one this quanta reads.")
            names = {f.name for f in fields(LayerSensitivity)}
            entries = tuple(LayerSensitivity(**{k: e[k] for k in names if k in e}) for e in data["entries"])
            return cls(
                metric=str(data["metric"]),
                higher_is_better=bool(data["higher_is_better"]),
                float_value=float(data["float_value"]),
                float_nbytes=int(data["float_nbytes"]),
                layers=tuple(data["layers"]),
                candidates=tuple(data["candidates"]),
                entries=entries,
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CorruptDataError):
                raise
            raise CorruptDataError(f"not a sensitivity result written by Sensitivity.to_json ({exc}).") from exc
