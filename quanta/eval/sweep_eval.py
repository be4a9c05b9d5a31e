"""What a sweep measures on each quantized model: a quality (accuracy or perplexity), the KL divergence from the
float model, and the fixed input its latency is timed on.

``KL(P_float || P_quantized)`` is in nats, averaged over images (classifiers: the softmax over classes) or over
next-token positions (language models, as :func:`quanta.eval.next_token_agreement` computes it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError
from quanta.eval.accuracy import accuracy
from quanta.eval.agreement import next_token_agreement
from quanta.eval.perplexity import _logits, mean_nll

__all__ = ["Evaluation", "accuracy_evaluation", "call_model", "perplexity_evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """The measurements of a sweep.

    Args:
        name: the quality's name (``"accuracy"``, ``"perplexity"``).
        higher_is_better: ``True`` for accuracy, ``False`` for perplexity.
        quality: ``f(model) -> float``.
        kl: ``f(model) -> float``: mean KL divergence from the float model, in nats.
        latency_input: the fixed input every latency is timed on (a tensor, passed as ``model(x)``).
    """

    name: str
    higher_is_better: bool
    quality: Callable[[nn.Module], float]
    kl: Callable[[nn.Module], float]
    latency_input: Any


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)``: the one way a sweep runs a model, for its measurements and its timings alike."""
    return model(x)


def accuracy_evaluation(
    float_model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, latency_batch: int = 64
) -> Evaluation:
    """Top-1 accuracy on ``(x, y)`` and KL from ``float_model``'s class distribution on ``x``.

    The float model's log-probabilities are computed here, once; latency is timed on ``x[:latency_batch]``.

    Raises:
        QuantaError: empty or mismatched ``x`` and ``y``.
    """
    if len(x) == 0 or len(x) != len(y):
        raise QuantaError(f"the evaluation set needs as many labels as images, got {len(x)} images, {len(y)} labels.")
    batches = x.split(batch_size)
    was_training = float_model.training
    float_model.eval()  # batch norms use their running statistics, as in every measurement of the sweep
    try:
        with torch.no_grad():
            reference = [F.log_softmax(float_model(b).float(), dim=-1) for b in batches]  # (b, classes) each
    finally:
        float_model.train(was_training)

    def kl(model: nn.Module) -> float:
        total = 0.0
        with torch.no_grad():
            for b, log_p in zip(batches, reference, strict=True):
                log_q = F.log_softmax(model(b).float(), dim=-1)
                total += float((log_p.exp() * (log_p - log_q)).sum(dim=-1).double().sum())
        return max(total / len(x), 0.0)

    return Evaluation(
        name="accuracy",
        higher_is_better=True,
        quality=lambda model: accuracy(model, (x, y), batch_size=batch_size),
        kl=kl,
        latency_input=x[:latency_batch],
    )


def perplexity_evaluation(
    float_model: nn.Module, ids: torch.Tensor, window: int, batch_size: int = 16, latency_tokens: int | None = None
) -> Evaluation:
    """Perplexity of the token ids ``ids`` over non-overlapping windows of ``window`` tokens (see
    :func:`quanta.eval.mean_nll`) and the mean next-token KL from ``float_model`` over the same windows.

    Latency is timed on one sequence: the first ``latency_tokens`` tokens (default: one window).

    Raises:
        QuantaError: fewer tokens than one window.
    """
    ids = ids.reshape(-1)
    if ids.numel() < window:
        raise QuantaError(
            f"the evaluation text has {ids.numel()} tokens, fewer than one window of {window}; pass a longer file "
            "or a smaller --seqlen."
        )
    probe = ids[: latency_tokens or window].unsqueeze(0)  # (1, tokens)
    _logits(float_model, probe[:, :2])  # fails early, with a clear message, on a model that gives no logits
    return Evaluation(
        name="perplexity",
        higher_is_better=False,
        quality=lambda model: math.exp(mean_nll(model, ids, window, batch_size=batch_size)),
        kl=lambda model: next_token_agreement(float_model, model, ids, window, batch_size=batch_size).kl,
        latency_input=probe,
    )
