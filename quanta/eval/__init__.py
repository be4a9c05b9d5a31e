"""Evaluation: accuracy, perplexity, next-token agreement and per-layer error against the float model."""

from quanta.eval.accuracy import accuracy
from quanta.eval.agreement import Agreement, next_token_agreement
from quanta.eval.embedding import embedding_cosine
from quanta.eval.layer_error import LayerError, layer_errors
from quanta.eval.perplexity import mean_nll, perplexity

__all__ = [
    "Agreement",
    "LayerError",
    "accuracy",
    "embedding_cosine",
    "layer_errors",
    "mean_nll",
    "next_token_agreement",
    "perplexity",
]
