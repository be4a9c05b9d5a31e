"""Compare recipes on one model: accuracy, bytes and latency of each quantized copy against the float model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quanta.errors import UnsupportedError
from quanta.eval.accuracy import accuracy

__all__ = ["PresetResult", "compare_presets"]


@dataclass(frozen=True)
class PresetResult:
    """One recipe's outcome; ``skipped`` says why it did not run (e.g. its method is not available yet).

    ``speedup`` is float latency / quantized latency, the best of alternating rounds in the same run.
    """

    recipe: str
    accuracy: float = float("nan")
    nbytes: int = 0
    latency_ms: float = float("nan")
    speedup: float = float("nan")
    skipped: str | None = None


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def _latencies(float_model: nn.Module, model: nn.Module, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Best seconds of one forward pass of each model over interleaved rounds.

    The best round, not the median: with the few rounds a demo can afford, a CPU that vanishes for a moment (as
    shared machines' do) can spoil most rounds of one candidate, and the best round is what the code can do.
    """
    with torch.no_grad():
        float_model(x), model(x)  # warm-up: first calls allocate
        pairs = [(_time_once(float_model, x), _time_once(model, x)) for _ in range(rounds)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def compare_presets(
    build: Callable[[], nn.Module],
    presets: Sequence[str],
    calib: Sequence[torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    rounds: int = 5,
    latency_batch: int | None = None,
    on_preset: Callable[[str], None] | None = None,
) -> tuple[PresetResult, list[PresetResult]]:
    """Quantize a fresh float model per preset and measure it against the float model on ``test``.

    Args:
        build: returns a fresh float model (eval mode) each call; quantization happens in place on it.
        presets: recipe names or paths for ``quanta.quantize``.
        calib: calibration batches (inputs only), used by recipes that need data.
        test: ``(x, y)``; accuracy over all of it.
        rounds: timed rounds per preset (the median is kept).
        latency_batch: latency is of one forward pass over the first ``latency_batch`` images (default: all).
        on_preset: called with each preset name before it runs (progress reporting).

    Returns:
        The float row (its latency is the median of its best rounds against each preset) and one row per
        preset. A preset whose method or scheme is unavailable (``UnsupportedError``) is returned with ``skipped``
        set to the reason.
    """
    from quanta.api import model_nbytes, quantize

    x = test[0][:latency_batch] if latency_batch else test[0]
    float_model = build()
    base_acc, base_bytes = accuracy(float_model, test), model_nbytes(float_model)
    rows: list[PresetResult] = []
    float_times: list[float] = []
    for name in presets:
        if on_preset is not None:
            on_preset(name)
        try:
            q = quantize(build(), name, calib=list(calib))
        except UnsupportedError as exc:
            rows.append(PresetResult(name, skipped=str(exc)))
            continue
        t_float, t_q = _latencies(float_model, q, x, rounds)
        float_times.append(t_float)
        rows.append(PresetResult(name, accuracy(q, test), model_nbytes(q), 1e3 * t_q, t_float / t_q))
    if not float_times:
        float_times.append(_latencies(float_model, float_model, x, rounds)[0])
    base = PresetResult("float", base_acc, base_bytes, 1e3 * statistics.median(float_times), 1.0)
    return base, rows
