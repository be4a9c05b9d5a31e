"""Packed ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections): ``y = x W + b`` with ``W`` stored ``[in, out]``.

Registered only when transformers imports; this file imports cleanly without it. The weight keeps its
``(nx, nf)`` = (in, out) layout, quantized with reduction axis 0 (:meth:`quant_axis`): as for a Linear, each
output feature gets its own scales and groups run along the input features.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import CorruptDataError
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor

__all__ = ["QuantHFConv1D"]


def _find_hf_conv1d() -> type[nn.Module] | None:
    """transformers' Conv1D class, or None without transformers (an optional extra: pip install quanta[hf]).

    Looked up through importlib so the type checker sees one definition with or without transformers installed.
    """
    try:
        utils = importlib.import_module("transformers.pytorch_utils")
    except ImportError:
        return None
    found = getattr(utils, "Conv1D", None)
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None


hf_conv1d = _find_hf_conv1d()


class QuantHFConv1D(QuantModule):
    def __init__(self, module: nn.Module, qweight: QTensor) -> None:
        super().__init__()
        self.nx, self.nf = (int(d) for d in module.get_parameter("weight").shape)  # in, out features
        if tuple(qweight.shape) != (self.nx, self.nf) or qweight.axis != 0:
            raise CorruptDataError(
                f"a Conv1D(nf={self.nf}, nx={self.nx}) weight must be packed with shape ({self.nx}, {self.nf}) and "
                f"axis 0, got shape {tuple(qweight.shape)} and axis {qweight.axis}; was it saved from this model?"
            )
        self._set_qweight(qweight)
        bias = module._parameters.get("bias")  # (nf,) or None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def quant_axis(cls, name: str) -> int | None:
        return 0  # W is (in, out): reduce over dim 0, one scale row per output feature

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantHFConv1D:
        return cls(module, qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        weight = self.dequantized_weight(x.dtype)  # (nx, nf), a transposed view of (nf, nx) rows
        # Conv1D computes x @ W + b; F.linear on W^T (contiguous (out, in)) is the same product with no copy.
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.t(), bias)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {super().extra_repr()}"


if hf_conv1d is not None:
    register_quant_module(hf_conv1d)(QuantHFConv1D)
