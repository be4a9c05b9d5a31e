"""Text as token ids: a whole file tokenized once, and seeded random calibration windows taken from it.

Protocol (issue 4): the whole file is tokenized without BOS or other special tokens; calibration takes N random
windows of L tokens (defaults N = 128, L = min(2048, the model's context)), seeded so a run is reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["calibration_windows", "context_length", "tokenize_file"]

MAX_SEQLEN = 2048


def tokenize_file(path: str | os.PathLike[str], tokenizer: Any) -> torch.Tensor:
    """Token ids of a whole UTF-8 text file, without BOS or any special token.

    Args:
        path: the text file.
        tokenizer: a transformers tokenizer (anything with ``encode(text, add_special_tokens=False)``).

    Returns:
        A 1-D int64 tensor of token ids.

    Raises:
        QuantaError: the file is missing or tokenizes to nothing.
    """
    file = Path(path)
    if not file.is_file():
        raise QuantaError(f"{file} is not a file; pass a UTF-8 text file.")
    ids = tokenizer.encode(file.read_text(encoding="utf-8"), add_special_tokens=False)
    if not ids:
        raise QuantaError(f"{file} tokenizes to no tokens; pass a file with text in it.")
    return torch.tensor(ids, dtype=torch.int64)


def context_length(model: nn.Module, limit: int = MAX_SEQLEN) -> int:
    """The default window: min(``limit``, the model's context from its HF config), ``limit`` when none is known."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return min(limit, value)
    return limit


def calibration_windows(ids: torch.Tensor, n: int = 128, length: int = MAX_SEQLEN, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` consecutive tokens at seeded random offsets of ``ids``.

    Args:
        ids: 1-D token ids (e.g. from :func:`tokenize_file`).
        n: number of windows.
        length: tokens per window.
        seed: the same seed gives the same windows.

    Returns:
        ``(n, length)`` int64 ids.

    Raises:
        QuantaError: ``ids`` is shorter than one window, or ``n`` / ``length`` is not positive.

    Example:
        >>> w = calibration_windows(torch.arange(100), n=4, length=10, seed=0)
        >>> tuple(w.shape), bool((w[:, 1:] - w[:, :-1] == 1).all())
        ((4, 10), True)
    """
    if n < 1 or length < 1:
        raise QuantaError(f"calibration needs n >= 1 windows of length >= 1 tokens, got n={n}, length={length}.")
    ids = ids.reshape(-1)
    if ids.numel() < length:
        raise QuantaError(
            f"the calibration text has {ids.numel()} tokens, fewer than one window of {length}; "
            "pass a longer file or a smaller window (--seqlen)."
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length + 1, (n,), generator=generator)  # (n,)
    return ids[starts[:, None] + torch.arange(length)]  # (n, length)
