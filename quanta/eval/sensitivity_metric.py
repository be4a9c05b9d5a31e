"""What :func:`quanta.sensitivity` measures on the whole model's output: KL vs float, loss, or accuracy.

* ``"kl"``: mean ``KL(P_float || P_model)`` (nats) of the output distributions (softmax over the last dimension),
  averaged over every output position (every image; every token of every window). The float model's
  log-probabilities are computed once. Data: ``eval_data`` if given, else the calibration steps.
* ``"loss"``: mean cross-entropy. A classifier takes ``(x, y)`` tensors; a language model a 1-D tensor of token
  ids, scored with :func:`quanta.eval.mean_nll` (non-overlapping windows).
* ``"accuracy"``: top-1 accuracy on ``(x, y)`` tensors (:func:`quanta.eval.accuracy`); higher is better.
* a callable ``f(model) -> float`` whose value grows as the model gets worse (a loss of your own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.calib import call_step
from quanta.errors import QuantaError
from quanta.eval.accuracy import accuracy
from quanta.eval.perplexity import mean_nll
from quanta.lm.text import context_length

__all__ = ["METRICS", "OutputMetric", "build_metric"]

METRICS = ("kl", "loss", "accuracy")


@dataclass(frozen=True)
class OutputMetric:
    """A number measured on a model: ``name``, whether ``higher_is_better``, and ``measure(model) -> float``."""

    name: str
    higher_is_better: bool
    measure: Callable[[nn.Module], float]

    def __call__(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(self.measure(model))


def _logits(model: nn.Module, step: Any, index: int) -> torch.Tensor:
    out = call_step(model, step, index)
    logits = getattr(out, "logits", out)  # transformers returns an output object, plain models a tensor
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise QuantaError(f"{type(model).__name__} returned {type(out).__name__}; metric 'kl' needs logits (.., C).")
    return logits.float()


def _is_pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _is_token_stream(data: Any) -> bool:
    return isinstance(data, torch.Tensor) and data.dim() == 1 and not data.is_floating_point()


def _kl(reference: nn.Module, steps: Sequence[Any]) -> OutputMetric:
    with torch.no_grad():
        ref = [F.log_softmax(_logits(reference, s, i), dim=-1) for i, s in enumerate(steps)]  # float outputs, once

    def measure(model: nn.Module) -> float:
        total, positions = 0.0, 0
        for i, (step, log_p) in enumerate(zip(steps, ref, strict=True)):
            log_q = F.log_softmax(_logits(model, step, i), dim=-1)
            if log_q.shape != log_p.shape:
                raise QuantaError(f"step {i}: outputs {tuple(log_q.shape)} differ from the float {tuple(log_p.shape)}.")
            total += float((log_p.exp() * (log_p - log_q)).sum(dim=-1).double().sum())
            positions += log_p[..., 0].numel()
        return max(total / positions, 0.0)

    return OutputMetric("kl", False, measure)


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if len(x) == 0 or len(x) != len(y):
        raise QuantaError(f"eval_data needs as many labels as inputs (got {len(x)} inputs, {len(y)} labels), > 0.")
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def _missing(metric: str, what: str) -> QuantaError:
    return QuantaError(f"metric {metric!r} needs an evaluation set: pass eval_data={what}.")


def build_metric(
    metric: str | Callable[[nn.Module], float],
    reference: nn.Module,
    eval_data: Any,
    calib: Sequence[Any],
    *,
    window: int | None = None,
    batch_size: int = 64,
) -> OutputMetric:
    """The :class:`OutputMetric` that ``metric`` names, on ``eval_data`` (see the module docstring).

    Args:
        metric: ``"kl"``, ``"loss"``, ``"accuracy"`` or a callable.
        reference: the float model (for ``"kl"``'s reference outputs, and a language model's context).
        eval_data: ``(x, y)`` tensors, a 1-D tensor of token ids, a list of model inputs (``"kl"``), or ``None``.
        calib: calibration steps, ``"kl"``'s data when ``eval_data`` is ``None``.
        window: tokens per window for token ids (default: the model's context, at most the ids' length).
        batch_size: inputs (or windows) per forward pass.

    Raises:
        QuantaError: an unknown metric, or an evaluation set missing or of the wrong kind for the metric.
    """
    if callable(metric):
        return OutputMetric(getattr(metric, "__name__", "custom"), False, metric)
    if metric not in METRICS:
        raise QuantaError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}, or pass a callable.")
    if _is_token_stream(eval_data):
        ids = eval_data
        size = min(context_length(reference), int(ids.numel())) if window is None else window
        if metric == "accuracy":
            raise QuantaError("metric 'accuracy' is for classifiers (eval_data=(x, y)); use 'loss' or 'kl' on ids.")
        if metric == "loss":
            return OutputMetric("loss", False, lambda m: mean_nll(m, ids, size, batch_size=batch_size))
        n = int(ids.numel()) // size
        if n == 0:
            raise QuantaError(f"eval_data has {ids.numel()} tokens, fewer than one window of {size}.")
        return _kl(reference, list(ids[: n * size].view(n, size).split(batch_size)))
    if metric == "kl":
        if eval_data is None:
            return _kl(reference, calib)
        steps = (
            [x for x, _ in _batches(eval_data[0], eval_data[1], batch_size)] if _is_pair(eval_data) else list(eval_data)
        )
        if not steps:
            raise QuantaError("eval_data is empty; pass at least one batch of inputs.")
        return _kl(reference, steps)
    if eval_data is None:
        raise _missing(metric, "(x, y) tensors (a language model's 'loss': a 1-D tensor of token ids)")
    if not _is_pair(eval_data):
        raise QuantaError(f"metric {metric!r} needs eval_data=(x, y) tensors, got {type(eval_data).__name__}.")
    x, y = eval_data
    batches = _batches(x, y, batch_size)
    if metric == "accuracy":
        return OutputMetric("accuracy", True, lambda m: accuracy(m, (x, y), batch_size=batch_size))

    def loss(model: nn.Module) -> float:
        total = sum(float(F.cross_entropy(_logits(model, xb, 0), yb, reduction="sum").double()) for xb, yb in batches)
        return total / len(y)

    return OutputMetric("loss", False, loss)
