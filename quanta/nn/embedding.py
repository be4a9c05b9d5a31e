"""Packed ``nn.Embedding``: rows looked up in the dequantized table (groups run along the hidden size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor


@register_quant_module(nn.Embedding)
class QuantEmbedding(QuantModule):
    def __init__(self, module: nn.Module, qweight: QTensor) -> None:
        super().__init__()
        assert isinstance(module, nn.Embedding)
        self.num_embeddings, self.embedding_dim = module.num_embeddings, module.embedding_dim
        self.padding_idx = module.padding_idx
        self._set_qweight(qweight)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QTensor) -> QuantEmbedding:
        return cls(module, qweight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.dequantized_weight(self.weight_dtype), self.padding_idx)
