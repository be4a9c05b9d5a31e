"""Evaluation: accuracy, perplexity and per-layer error against the float model."""

from quanta.eval.accuracy import accuracy
from quanta.eval.layer_error import LayerError, layer_errors
from quanta.eval.perplexity import mean_nll, perplexity

__all__ = ["LayerError", "accuracy", "layer_errors", "mean_nll", "perplexity"]
