"""Keep torch's fused transformer fast path away from modules that hold packed weights.

``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` take a fused kernel in eval mode that reads
``self_attn.in_proj_weight`` and ``linear1.weight`` directly: it would fail on a packed module (which has no float
weight) and, where it did not, it would skip the activation quantization of the packed modules. Their eligibility
check reads ``activation_relu_or_gelu`` (used nowhere else), so clearing it on the layers that hold packed modules
sends them down the module-by-module path, which calls every packed module's own forward.
"""

from __future__ import annotations

from torch import nn

from quanta.nn.base import QuantModule

__all__ = ["disable_fused_fast_paths"]


def _holds_packed(module: nn.Module) -> bool:
    return any(isinstance(m, QuantModule) for m in module.modules())


def disable_fused_fast_paths(model: nn.Module) -> int:
    """Turn off torch's fused encoder fast path wherever it would meet a packed module; returns the layer count."""
    layers: list[nn.TransformerEncoderLayer] = []
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _holds_packed(module):
            layers.append(module)
        elif isinstance(module, nn.TransformerEncoder) and _holds_packed(module) and len(module.layers) > 0:
            first = module.layers[0]  # the encoder checks only its first layer before fusing all of them
            if isinstance(first, nn.TransformerEncoderLayer):
                layers.append(first)
    unique = {id(layer): layer for layer in layers}
    for layer in unique.values():
        layer.activation_relu_or_gelu = 0
    return len(unique)
