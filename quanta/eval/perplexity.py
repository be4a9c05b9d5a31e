"""Perplexity of a token stream: exp(mean next-token negative log-likelihood) over full windows.

Protocol (issue 4): the text is tokenized whole without BOS; windows of ``window`` tokens start every ``stride``
tokens (default ``stride = window``: non-overlapping), and a tail shorter than a window is dropped. Within the
first window every next-token prediction counts (``window - 1`` of them); with overlapping windows each later
window scores only its last ``stride`` tokens, so every token is scored once, with at least ``window - stride``
tokens of context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError

__all__ = ["mean_nll", "perplexity"]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = getattr(out, "logits", out)  # transformers returns an output object, plain models a tensor
    if not isinstance(logits, torch.Tensor):
        raise QuantaError(f"{type(model).__name__} returned {type(out).__name__}; expected logits (batch, seq, vocab).")
    return logits


def mean_nll(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 16
) -> float:
    """Mean next-token negative log-likelihood (nats) of ``ids`` under ``model``; see the module docstring.

    Args:
        model: a causal LM: ``model(ids)`` gives logits ``(batch, seq, vocab)`` or an object with ``.logits``.
        ids: 1-D token ids.
        window: tokens per window (the model's context at most).
        stride: tokens between window starts, ``1 <= stride <= window``; ``None`` means ``window``.
        batch_size: windows per forward pass.

    Raises:
        QuantaError: fewer tokens than one window, or a bad window / stride.
    """
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise QuantaError(f"perplexity needs window >= 2 and 1 <= stride <= window, got {window=}, {stride=}.")
    ids = ids.reshape(-1)
    if ids.numel() < window:
        raise QuantaError(f"the text has {ids.numel()} tokens, fewer than one window of {window}; use a smaller one.")
    starts = torch.arange(0, ids.numel() - window + 1, stride)  # (n,)
    windows = ids[starts[:, None] + torch.arange(window)]  # (n, window)
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    total, count = 0.0, 0
    with torch.no_grad():
        for first in range(0, windows.shape[0], batch_size):
            batch = windows[first : first + batch_size].to(device)  # (b, window)
            logits = _logits(model, batch)[:, :-1].float()  # (b, window - 1, vocab)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
            nll = nll.view(batch.shape[0], window - 1)  # nll[:, t]: the loss of predicting token t + 1
            # The first window scores every prediction; later ones only their last `stride` tokens.
            skip = torch.full((batch.shape[0],), window - 1 - stride)
            if first == 0:
                skip[0] = 0
            keep = torch.arange(window - 1)[None, :] >= skip[:, None]  # (b, window - 1)
            total += float(nll[keep.to(nll.device)].double().sum())
            count += int(keep.sum())
    return total / count


def perplexity(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 16
) -> float:
    """Perplexity ``exp(mean next-token NLL)`` of ``ids`` under ``model`` over full windows (see :func:`mean_nll`).

    Example:
        >>> class Uniform(torch.nn.Module):  # equal logits over 10 tokens: perplexity is the vocabulary size
        ...     def forward(self, ids):
        ...         return torch.zeros(*ids.shape, 10)
        >>> round(perplexity(Uniform(), torch.randint(0, 10, (100,)), window=8), 3)
        10.0
    """
    return math.exp(mean_nll(model, ids, window, stride, batch_size))
