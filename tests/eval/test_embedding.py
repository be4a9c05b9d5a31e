"""Cosine similarity of pooled encoder embeddings (quanta.eval.embedding_cosine) on a random BERT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import quanta
from quanta.errors import QuantaError
from quanta.eval import embedding_cosine

transformers = pytest.importorskip("transformers")


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    return transformers.BertModel(config).eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0  # padding at the end of every row
    return [{"input_ids": ids, "attention_mask": mask}]


def test_cosine_is_one_for_the_same_model_and_follows_the_bit_width() -> None:
    model, batches = _bert(), _batches()
    assert embedding_cosine(model, model, batches) == pytest.approx(1.0)
    w8 = embedding_cosine(model, quanta.quantize(copy.deepcopy(model), "w8a16"), batches)
    w2 = embedding_cosine(model, quanta.quantize(copy.deepcopy(model), "w2a16-g16"), batches)
    assert 0.999 < w8 <= 1.0 and w2 < w8


def test_masked_mean_pooling_matches_an_explicit_computation() -> None:
    model, batches = _bert(), _batches()
    q = quanta.quantize(copy.deepcopy(model), "w4a16-g32")
    batch = batches[0]
    with torch.no_grad():
        a = model(**batch).last_hidden_state[:, :9].mean(dim=1)  # the kept tokens only
        b = q(**batch).last_hidden_state[:, :9].mean(dim=1)
    expected = float(F.cosine_similarity(a, b, dim=-1).mean())
    assert embedding_cosine(model, q, batches) == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_raise_named_errors() -> None:
    model = _bert()
    with pytest.raises(QuantaError, match="no batches"):
        embedding_cosine(model, model, [])
    with pytest.raises(QuantaError, match="hidden states"):
        embedding_cosine(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), [torch.randn(2, 4)])
