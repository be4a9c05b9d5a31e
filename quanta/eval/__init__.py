"""Evaluation: accuracy and per-layer error against the float model."""

from quanta.eval.accuracy import accuracy

__all__ = ["accuracy"]
