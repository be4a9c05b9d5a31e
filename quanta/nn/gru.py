"""Packed ``nn.GRU``: every ``weight_ih/hh`` matrix a QTensor, biases float, torch's fused ``gru`` op.

Options as in ``nn.GRU``: num_layers, bidirectional, batch_first, dropout (applied in training mode only, as
torch does), initial ``h0``, unbatched input and packed sequences.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from quanta.nn.base import register_quant_module
from quanta.nn.rnn import QuantRNNBase


@register_quant_module(nn.GRU)
class QuantGRU(QuantRNNBase):
    rnn_type = nn.GRU

    def _state_sizes(self) -> list[int]:
        return [self.hidden_size]  # h: (layers * directions, batch, hidden)

    def _fused(
        self,
        data: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        states: list[torch.Tensor],
        weights: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        L, p, train, bi = self.num_layers, self.dropout, self.training, self.bidirectional
        if batch_sizes is None:
            return torch.gru(data, states[0], weights, self.bias, L, p, train, bi, self.batch_first)
        return torch.gru(data, batch_sizes, states[0], weights, self.bias, L, p, train, bi)

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        output, (h,) = self._run(input, None if hx is None else (hx,))
        return output, h
