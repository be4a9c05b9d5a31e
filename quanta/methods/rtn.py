"""Round to nearest (RTN): each weight goes to its nearest level of the scheme's grid. The default rounding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.methods.registry import Method, register_method
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["rtn_weight"]


def rtn_weight(_name: str, layer: nn.Module, scheme: QScheme, _stats: Any = None) -> QTensor:
    """``quantize_tensor(layer.weight, scheme)``."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return quantize_tensor(weight.detach(), scheme)


register_method(Method("rtn", "rounding", "round to nearest (no data needed)", round=rtn_weight))
