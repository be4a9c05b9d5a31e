"""Perplexity: closed forms on hand-built models, and the float stories260K reference of its SOURCE.md."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from quanta.errors import QuantaError
from quanta.eval import mean_nll, perplexity

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class _Uniform(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


class _Bigram(nn.Module):
    """Predicts "next = current + 1" with probability p, the rest spread evenly: NLL is -log p when right."""

    def __init__(self, vocab: int, p: float) -> None:
        super().__init__()
        logp = torch.full((vocab, vocab), math.log((1 - p) / (vocab - 1)))
        logp[torch.arange(vocab), (torch.arange(vocab) + 1) % vocab] = math.log(p)
        self.logp = logp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logp[ids]


def test_uniform_logits_give_the_vocabulary_size() -> None:
    ids = torch.randint(0, 37, (500,), generator=torch.Generator().manual_seed(0))
    assert perplexity(_Uniform(37), ids, window=16) == pytest.approx(37, rel=math.log(37) * 2**-23)  # float32 terms


def test_bigram_counts_only_predictions_inside_full_windows() -> None:
    # The stream 0, 1, 2, ..., 9, 0, 1, ... (every prediction right) with token 6 replaced by 0.
    ids = torch.arange(23) % 10
    ids[6] = 0  # tokens 6 (after 5) and 7 (after 0) are mispredicted: -log((1 - p) / 9) each
    p = 0.9
    right, wrong = -math.log(p), -math.log((1 - p) / 9)
    # window 8: windows [0, 8), [8, 16), [16, 23) -> the tail of 7 tokens is dropped; 2 * 7 predictions.
    expected = (12 * right + 2 * wrong) / 14
    assert mean_nll(_Bigram(10, p), ids, window=8, batch_size=1) == pytest.approx(expected, rel=2**-21)
    # stride 4: windows at 0, 4, 8, 12; the first scores 7 predictions, each later one its last 4 -> 19.
    assert mean_nll(_Bigram(10, p), ids, window=8, stride=4) == pytest.approx((17 * right + 2 * wrong) / 19, rel=2**-21)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(QuantaError, match="fewer than one window"):
        perplexity(_Uniform(4), torch.zeros(5, dtype=torch.int64), window=8)
    with pytest.raises(QuantaError, match="stride"):
        perplexity(_Uniform(4), torch.zeros(50, dtype=torch.int64), window=8, stride=9)


@pytest.mark.skipif(not (DATA / "stories260K_hf").is_dir(), reason="../shared/data is not present")
def test_float_stories260k_reproduces_source_md() -> None:
    pytest.importorskip("transformers")
    from quanta.lm import load_hf, tokenize_file

    model, tokenizer = load_hf(DATA / "stories260K_hf")
    ids = tokenize_file(DATA / "tinystories_val" / "tinystories_val.txt", tokenizer)
    assert ids.numel() == 393_018
    nll = mean_nll(model, ids, window=256, batch_size=64)  # 1,535 windows
    assert round(nll, 4) == 1.6334 and round(math.exp(nll), 3) == 5.121
