"""Packed ``nn.LSTM``: every ``weight_ih/hh/hr`` matrix a QTensor, biases float, torch's fused ``lstm`` op.

Options as in ``nn.LSTM``: num_layers, bidirectional, batch_first, dropout (applied in training mode only, as
torch does), proj_size, initial ``(h0, c0)``, unbatched input and packed sequences.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from quanta.nn.base import register_quant_module
from quanta.nn.rnn import QuantRNNBase


@register_quant_module(nn.LSTM)
class QuantLSTM(QuantRNNBase):
    rnn_type = nn.LSTM

    def _state_sizes(self) -> list[int]:
        # h: (layers * directions, batch, proj_size or hidden); c: (layers * directions, batch, hidden)
        return [self.proj_size or self.hidden_size, self.hidden_size]

    def _fused(
        self,
        data: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        states: list[torch.Tensor],
        weights: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        L, p, train, bi = self.num_layers, self.dropout, self.training, self.bidirectional
        if batch_sizes is None:
            return torch.lstm(data, states, weights, self.bias, L, p, train, bi, self.batch_first)
        return torch.lstm(data, batch_sizes, states, weights, self.bias, L, p, train, bi)

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        output, (h, c) = self._run(input, hx)
        return output, (h, c)
