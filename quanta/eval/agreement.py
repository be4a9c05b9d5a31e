"""How closely a quantized language model follows the float one: mean KL divergence of the next-token
distributions and top-1 agreement, token by token (as llama.cpp's ``--kl-divergence`` reports them).

Same windows as :func:`quanta.eval.mean_nll` (non-overlapping windows of ``window`` tokens, a short tail dropped);
every next-token position of every window counts. ``KL(P_float || P_quantized)`` in nats, averaged over positions;
top-1 agreement is the share of positions where both models' most likely next token is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError
from quanta.eval.perplexity import _logits

__all__ = ["Agreement", "next_token_agreement"]


@dataclass(frozen=True)
class Agreement:
    """``kl``: mean KL(float || quantized) in nats per token; ``top1``: share of matching argmax tokens;
    ``positions``: how many next-token positions were compared."""

    kl: float
    top1: float
    positions: int


def next_token_agreement(
    reference: nn.Module, model: nn.Module, ids: torch.Tensor, window: int, batch_size: int = 16
) -> Agreement:
    """Compare ``model``'s next-token distributions with ``reference``'s on ``ids``.

    Raises:
        QuantaError: fewer tokens than one window, a window below 2, or vocabularies that differ.

    Example:
        >>> class Fixed(torch.nn.Module):
        ...     def __init__(self, logits): super().__init__(); self.logits = torch.tensor(logits)
        ...     def forward(self, ids): return self.logits.expand(*ids.shape, -1)
        >>> a = next_token_agreement(Fixed([0.0, 0.0]), Fixed([0.0, 0.0]), torch.zeros(8, dtype=torch.long), 4)
        >>> (a.kl, a.top1, a.positions)
        (0.0, 1.0, 6)
    """
    ids = ids.reshape(-1)
    if window < 2:
        raise QuantaError(f"agreement needs windows of at least 2 tokens, got {window}.")
    if ids.numel() < window:
        raise QuantaError(f"the text has {ids.numel()} tokens, fewer than one window of {window}; use a smaller one.")
    n = ids.numel() // window
    windows = ids[: n * window].view(n, window)
    kl_total, agree, count = 0.0, 0, 0
    with torch.no_grad():
        for first in range(0, n, batch_size):
            batch = windows[first : first + batch_size]
            p_logits = _logits(reference, batch)[:, :-1].float()  # (b, window - 1, vocab)
            q_logits = _logits(model, batch)[:, :-1].float()
            if p_logits.shape != q_logits.shape:
                raise QuantaError(
                    f"the models' logits differ in shape ({tuple(p_logits.shape)} vs {tuple(q_logits.shape)}): "
                    "compare a quantized model with the float model it came from."
                )
            log_p, log_q = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (b, window - 1)
            kl_total += float(kl.double().sum())
            agree += int((p_logits.argmax(dim=-1) == q_logits.argmax(dim=-1)).sum())
            count += kl.numel()
    return Agreement(kl=max(kl_total / count, 0.0), top1=agree / count, positions=count)
