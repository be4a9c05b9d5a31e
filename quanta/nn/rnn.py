"""The part shared by packed ``nn.LSTM`` and ``nn.GRU``: every weight matrix packed, biases float, torch's fused op.

The forward pass dequantizes each weight once (reference path) and calls torch's own fused recurrent op with the
flat weight list in the order it expects, so the result equals the float module running on the dequantized
weights. The input sequence (not the hidden state, which lives inside the fused op) is quantized when the rule
asks for activations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from quanta.errors import InvalidTensorError, UnsupportedError
from quanta.nn.base import QuantModule
from quanta.tensor import QTensor

__all__ = ["QuantRNNBase", "flat_weight_names"]


def flat_weight_names(module: nn.RNNBase) -> list[str]:
    """Parameter names in the order torch's fused RNN ops take them: per layer, per direction,
    ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]``."""
    names = []
    suffixes = ["", "_reverse"] if module.bidirectional else [""]
    for layer in range(module.num_layers):
        for suffix in suffixes:
            tail = f"_l{layer}{suffix}"
            names += [f"weight_ih{tail}", f"weight_hh{tail}"]
            if module.bias:
                names += [f"bias_ih{tail}", f"bias_hh{tail}"]
            if getattr(module, "proj_size", 0) > 0:
                names.append(f"weight_hr{tail}")
    return names


class QuantRNNBase(QuantModule):
    """Packed recurrent module: ``weight_*`` as QTensors (one per matrix), ``bias_*`` as float parameters."""

    rnn_type: ClassVar[type[nn.RNNBase]]
    supports_qat = True  # fake-quantized, the same forward runs on the fake-quantized weights and input

    def __init__(self, module: nn.Module, qweights: Mapping[str, QTensor]) -> None:
        super().__init__()
        if not isinstance(module, self.rnn_type):
            raise UnsupportedError(f"{type(self).__name__} replaces {self.rnn_type.__name__}, got {type(module)}.")
        self.input_size, self.hidden_size, self.num_layers = module.input_size, module.hidden_size, module.num_layers
        self.bias, self.batch_first, self.bidirectional = module.bias, module.batch_first, module.bidirectional
        self.dropout, self.proj_size = float(module.dropout), int(getattr(module, "proj_size", 0))
        self._flat_names = flat_weight_names(module)
        self.train(module.training)  # dropout between layers depends on the mode: keep the float module's
        for name in self._flat_names:
            if name.startswith("weight_"):
                self._set_qweight(qweights[name], name)
            else:  # biases stay float: they are few and added after the matmuls
                setattr(self, name, nn.Parameter(getattr(module, name).detach().clone(), requires_grad=False))

    @classmethod
    def weight_names(cls, module: nn.Module) -> tuple[str, ...]:
        assert isinstance(module, nn.RNNBase)
        return tuple(n for n in flat_weight_names(module) if n.startswith("weight_"))

    @classmethod
    def from_float_weights(cls, module: nn.Module, qweights: Mapping[str, QTensor]) -> QuantModule:
        return cls(module, qweights)

    def _state_sizes(self) -> list[int]:
        """Feature size of each recurrent state tensor: ``[h]`` for GRU, ``[h, c]`` for LSTM."""
        raise NotImplementedError

    def _fused(
        self,
        data: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        states: list[torch.Tensor],
        weights: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """torch's fused op: ``(output, *new_states)``; ``batch_sizes`` is set for packed sequences."""
        raise NotImplementedError

    def _run(self, input: torch.Tensor | PackedSequence, hx: Sequence[torch.Tensor] | None) -> tuple[Any, list[Any]]:
        """The shared forward: returns ``(output, states)`` shaped as the float module returns them."""
        directions = 2 if self.bidirectional else 1
        batch_sizes = sorted_indices = unsorted_indices = None
        batched = True
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise InvalidTensorError(
                    f"{type(self).__name__} expects a (seq, batch, features) input, (batch, seq, features) with "
                    f"batch_first, or an unbatched (seq, features) one; got shape {tuple(input.shape)}."
                )
            batched = input.dim() == 3
            data = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            batch = data.size(0 if self.batch_first else 1)
        if data.size(-1) != self.input_size:
            raise InvalidTensorError(
                f"{type(self).__name__} has input_size={self.input_size}, got {data.size(-1)} features "
                f"(input shape {tuple(data.shape)})."
            )
        data = self.quantize_input(data)
        sizes = self._state_sizes()
        if hx is None:
            states = [data.new_zeros(self.num_layers * directions, batch, size) for size in sizes]
        else:
            if len(hx) != len(sizes):
                raise InvalidTensorError(
                    f"{type(self).__name__} takes {len(sizes)} initial state tensor(s), got {len(hx)}."
                )
            stacked = self.num_layers * directions
            states = []
            for h, size in zip(hx, sizes, strict=True):
                expected = (stacked, batch, size) if batched else (stacked, size)
                if tuple(h.shape) != expected:
                    raise InvalidTensorError(
                        f"{type(self).__name__}: initial state of shape {tuple(h.shape)} does not fit the input; "
                        f"expected {expected} (layers * directions, {'batch, ' if batched else ''}features)."
                    )
                states.append(h if batched else h.unsqueeze(1))
            if sorted_indices is not None:  # packed batches are sorted by length: states follow that order
                states = [h.index_select(1, sorted_indices) for h in states]
        # Each weight dequantized once for this call; biases cast to the compute dtype.
        weights = [
            self.dequantized_weight(data.dtype, n) if n.startswith("weight_") else getattr(self, n).to(data.dtype)
            for n in self._flat_names
        ]
        output, *new_states = self._fused(data, batch_sizes, states, weights)
        if isinstance(input, PackedSequence):
            if unsorted_indices is not None:
                new_states = [h.index_select(1, unsorted_indices) for h in new_states]
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), new_states
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), [h.squeeze(1) for h in new_states]
        return output, new_states

    def extra_repr(self) -> str:
        if self.fake_quantized:
            return super().extra_repr()
        schemes = sorted({str(meta[0]) for meta in self._qweight_meta.values()})
        act = "" if self.act_scheme is None else f", input={self.act_scheme}{' per token' if self.act_dynamic else ''}"
        options = f", num_layers={self.num_layers}" if self.num_layers != 1 else ""
        options += ", bidirectional=True" if self.bidirectional else ""
        options += f", proj_size={self.proj_size}" if self.proj_size else ""
        return f"{self.input_size}, {self.hidden_size}{options}, weights={'/'.join(schemes)}{act}"
