"""Packed ``nn.MultiheadAttention``: the input and output projections as QTensors, the rest float.

Packed: ``in_proj_weight`` (3E, E), or ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim) and
``v_proj_weight`` (E, vdim) when kdim/vdim differ from E; and ``out_proj_weight`` (E, E), the weight of the
float module's ``out_proj`` child (which this twin replaces along with its parent). Float: the biases, ``bias_k``
and ``bias_v``. The forward pass is torch's own ``F.multi_head_attention_forward`` on the dequantized weights
(the float module's general path), so every argument of ``nn.MultiheadAttention.forward`` works the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import UnsupportedError
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor

__all__ = ["QuantMultiheadAttention"]

_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _float_param(value: torch.Tensor | None) -> nn.Parameter | None:
    return None if value is None else nn.Parameter(value.detach().clone(), requires_grad=False)


@register_quant_module(nn.MultiheadAttention)
class QuantMultiheadAttention(QuantModule):
    def __init__(self, module: nn.Module, qweights: Mapping[str, QTensor]) -> None:
        super().__init__()
        if not isinstance(module, nn.MultiheadAttention):
            raise UnsupportedError(f"QuantMultiheadAttention replaces nn.MultiheadAttention, got {type(module)}.")
        self.embed_dim, self.num_heads, self.head_dim = module.embed_dim, module.num_heads, module.head_dim
        self.kdim, self.vdim = module.kdim, module.vdim
        self._qkv_same_embed_dim = module._qkv_same_embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = module.dropout, module.batch_first, module.add_zero_attn
        for name in self.weight_names(module):
            self._set_qweight(qweights[name], name)
        self.in_proj_bias = _float_param(module.in_proj_bias)
        self.out_proj_bias = _float_param(module.out_proj.bias)
        self.bias_k, self.bias_v = _float_param(module.bias_k), _float_param(module.bias_v)
        self.train(module.training)  # attention dropout depends on the mode: keep the float module's

    @classmethod
    def weight_names(cls, module: nn.Module) -> tuple[str, ...]:
        assert isinstance(module, nn.MultiheadAttention)
        inputs = ("in_proj_weight",) if module._qkv_same_embed_dim else _SEPARATE
        return (*inputs, "out_proj_weight")

    @classmethod
    def float_weight(cls, module: nn.Module, name: str) -> torch.Tensor | None:
        if name == "out_proj_weight":  # lives in the out_proj child, which this twin absorbs
            out_proj = getattr(module, "out_proj", None)
            return getattr(out_proj, "weight", None)
        return super().float_weight(module, name)

    @classmethod
    def from_float_weights(cls, module: nn.Module, qweights: Mapping[str, QTensor]) -> QuantModule:
        return cls(module, qweights)

    def _inputs(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize the inputs when the rule asks, keeping self-attention's ``query is key is value`` identity
        (torch takes a single fused projection for it)."""
        if self.act_scheme is None:
            return query, key, value
        if not self.act_dynamic and not (key is query and value is query):
            raise UnsupportedError(
                "the static input scale of this MultiheadAttention was calibrated on the query only, but key/value "
                "are other tensors (cross-attention): use dynamic activations (e.g. w8a8-dyn) or a rule that keeps "
                "this module's activations in float."
            )
        q = self.quantize_input(query)
        k = q if key is query else self.quantize_input(key)
        v = q if value is query else (k if value is key else self.quantize_input(value))
        return q, k, v

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self._inputs(query, key, value)
        dtype = query.dtype
        # Masks are made float (-inf where masked) exactly as nn.MultiheadAttention.forward does.
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask",
            target_type=dtype,
        )
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=dtype, check_other=False
        )
        batched = query.dim() == 3
        if self.batch_first and batched:  # (batch, seq, E) -> (seq, batch, E), preserving identities
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        weights = {n: self.dequantized_weight(dtype, n) for n in self._qweight_meta}  # each dequantized once

        def cast(p: torch.Tensor | None) -> torch.Tensor | None:
            return None if p is None else p.to(dtype)

        out, attn = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            weights.get("in_proj_weight"),
            cast(self.in_proj_bias),
            cast(self.bias_k),
            cast(self.bias_v),
            self.add_zero_attn,
            self.dropout,
            weights["out_proj_weight"],
            cast(self.out_proj_bias),
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=weights.get("q_proj_weight"),
            k_proj_weight=weights.get("k_proj_weight"),
            v_proj_weight=weights.get("v_proj_weight"),
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, attn
