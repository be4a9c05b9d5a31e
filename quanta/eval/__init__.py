"""Evaluation: accuracy and per-layer error against the float model."""

from quanta.eval.accuracy import accuracy
from quanta.eval.layer_error import LayerError, layer_errors

__all__ = ["LayerError", "accuracy", "layer_errors"]
