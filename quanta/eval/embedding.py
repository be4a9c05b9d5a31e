"""How closely a quantized encoder (BERT family) follows the float one: cosine similarity of pooled embeddings.

Each input batch runs through both models; the last hidden states ``(batch, tokens, hidden)`` are mean-pooled over
the tokens the attention mask keeps (all tokens without a mask), and the cosine similarity of the two pooled
vectors is averaged over every sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError

__all__ = ["embedding_cosine"]


def _hidden(model: nn.Module, batch: Any) -> torch.Tensor:
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    hidden = getattr(out, "last_hidden_state", out)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise QuantaError(
            f"{type(model).__name__} gave {type(out).__name__}; expected hidden states (batch, tokens, hidden) or an "
            "output with .last_hidden_state (an encoder such as BertModel)."
        )
    return hidden.float()


def _pool(hidden: torch.Tensor, batch: Any) -> torch.Tensor:
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (batch, tokens, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def embedding_cosine(reference: nn.Module, model: nn.Module, batches: Iterable[Any]) -> float:
    """Mean cosine similarity between ``model``'s and ``reference``'s mean-pooled embeddings over ``batches``
    (token-id tensors, or dicts of keyword arguments such as ``input_ids`` and ``attention_mask``).

    Raises:
        QuantaError: no batches, or a model that does not return hidden states.

    Example:
        >>> enc = torch.nn.Embedding(10, 4)
        >>> round(embedding_cosine(enc, enc, [torch.tensor([[1, 2, 3]])]), 6)
        1.0
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            a, b = _pool(_hidden(reference, batch), batch), _pool(_hidden(model, batch), batch)
            total += float(F.cosine_similarity(a, b, dim=-1).double().sum())
            count += a.shape[0]
    if count == 0:
        raise QuantaError("embedding_cosine got no batches; pass at least one batch of inputs.")
    return min(total / count, 1.0)
