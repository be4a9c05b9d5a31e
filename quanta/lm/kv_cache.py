"""A KV cache that holds int8 or packed int4 codes: transformers' cache interface, quanta's integer grid.

Each new key / value vector (one per batch row, head and token: ``(batch, heads, tokens, head_dim)``) is quantized
on arrival with one symmetric scale per (row, head, token), ``s = max|x| / qmax`` over the head dimension, stored
in float16 (``qmax = 127`` for int8, 7 for int4, codes clamped to ``[-qmax, qmax]``). int8 codes are stored as
int8; int4 codes as two per byte along the head dimension (low nibble first, offset by 8). Nothing else is kept:
every attention call gets the dequantized keys and values, so the cache's memory is the codes plus the scales
(:attr:`QuantizedKVLayer.nbytes`), not a float copy.

Use it by passing a cache to transformers: ``model.generate(ids, cache=quantized_kv_cache(8))``, or to a forward
pass (``model(ids, cache=cache, use_cache=True)``), where attention already reads the quantized keys and values of
the same call: that is how the perplexity cost of the cache is measured (:func:`with_kv_cache`). The ``+kv8`` /
``+kv4`` suffix of a preset records the choice in the recipe (quanta.json); ``quanta generate`` and
``quanta eval`` use it.

Calibrated keys (:func:`calibrate_kv`): keys have outlier channels (the same few dimensions of every head are
large for every token, e.g. from rotary position embeddings), so one scale per token wastes most levels on them.
``calibrate_kv(model, steps, bits)`` runs calibration inputs through a recording cache and stores one static scale
per (layer, key head, channel), ``max |k| / qmax`` over the calibration tokens, in the model as the buffer
``quanta_kv_key_scale`` (saved in model.safetensors, reloaded by ``quanta.load``); a cache built with those scales
stores key codes only (values keep per-token scales). ``quanta quantize --calib`` calibrates them for ``+kv4`` /
``+kv8`` presets.

Measured on stories260K (head_dim 8): ``kv8`` costs +0.2% perplexity and matches float greedy text; ``kv4`` with
per-token scales is far worse (+150%); see BENCHMARKS.md for calibrated per-channel keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError, UnsupportedError
from quanta.lm.hf import transformers_module

__all__ = [
    "KEY_SCALE_BUFFER",
    "cache_nbytes",
    "calibrate_kv",
    "dequantize_kv",
    "kv_bits_of",
    "kv_key_scales_of",
    "quantize_kv",
    "quantize_kv_static",
    "quantized_kv_cache",
    "with_kv_cache",
]

SCALE_DTYPE = torch.float16
KEY_SCALE_BUFFER = "quanta_kv_key_scale"  # (layers, key heads, head_dim) float16, on the model


def _qmax(bits: int) -> int:
    if bits not in (4, 8):
        raise UnsupportedError(f"KV-cache codes are 8 or 4 bits, got {bits}: use +kv8 or +kv4.")
    return 127 if bits == 8 else 7


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        raise UnsupportedError(f"int4 KV codes pack two per byte: head_dim {codes.shape[-1]} is odd; use +kv8.")
    nibbles = (codes + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def _codes(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """int8 codes ``clamp(round(x / scale), -qmax, qmax)``; a zero scale (an all-zero vector) divides by 1."""
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x.float() / safe).clamp_(-qmax, qmax).to(torch.int8)


def quantize_kv_static(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``x`` (batch, heads, tokens, head_dim) on the static per-channel grid ``scale`` (heads, head_dim):
    ``clamp(round(x / scale), -qmax, qmax)``, packed as :func:`quantize_kv` packs them."""
    return _pack(_codes(x, scale.unsqueeze(-2), _qmax(bits)), bits)  # scale (heads, 1, head_dim)


def quantize_kv(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)`` of ``x`` (..., head_dim): int8 codes, or uint8 with two int4 codes a byte; float16
    scales (..., 1), one per vector.

    Example:
        >>> codes, scales = quantize_kv(torch.tensor([[1.0, -0.5, 0.25, 0.0]]), 8)
        >>> codes.tolist(), scales.float().item()
        ([[127, -64, 32, 0]], 0.00787353515625)
    """
    qmax = _qmax(bits)
    scales = (x.detach().float().abs().amax(dim=-1, keepdim=True) / qmax).to(SCALE_DTYPE)
    return _pack(_codes(x, scales, qmax), bits), scales


def dequantize_kv(codes: torch.Tensor, scales: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The vectors :func:`quantize_kv` encoded, in ``dtype``."""
    if bits == 4:
        low, high = (codes & 0x0F).to(torch.int8) - 8, (codes >> 4).to(torch.int8) - 8
        codes = torch.stack([low, high], dim=-1).flatten(-2)
    return (codes.float() * scales.float()).to(dtype)


def _layer_class(bits: int) -> type[Any]:
    dynamic_layer: Any = transformers_module().cache_utils.DynamicLayer

    class QuantizedKVLayer(dynamic_layer):
        """One attention layer's cache: int codes and float16 scales for keys and values; with a static
        ``key_scale`` (heads, head_dim), key codes only."""

        key_scale: torch.Tensor | None = None

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device, self.dtype = key_states.device, key_states.dtype
            empty = key_states[..., :0, :]
            self.stored = {
                "keys": quantize_kv(empty, bits),
                "values": quantize_kv(value_states[..., :0, :], bits),
            }
            # transformers reads .keys / .values in places (offloading, repr): empty placeholders, never a copy.
            self.keys, self.values = empty, value_states[..., :0, :]
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            out = []
            for name, new in (("keys", key_states), ("values", value_states)):
                if name == "keys" and self.key_scale is not None:  # static per-channel grid: codes only
                    all_codes = torch.cat([self.stored["keys"][0], quantize_kv_static(new, self.key_scale, bits)], -2)
                    self.stored["keys"] = (all_codes, self.key_scale)
                    out.append(dequantize_kv(all_codes, self.key_scale.unsqueeze(-2), bits, self.dtype))
                    continue
                codes, scales = quantize_kv(new, bits)
                old_codes, old_scales = self.stored[name]
                self.stored[name] = (torch.cat([old_codes, codes], dim=-2), torch.cat([old_scales, scales], dim=-2))
                out.append(dequantize_kv(*self.stored[name], bits, self.dtype))
            return out[0], out[1]

        def get_seq_length(self) -> int:
            return 0 if not self.is_initialized else int(self.stored["keys"][0].shape[-2])

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

        def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
            if self.is_initialized:
                static = self.key_scale
                self.stored = {
                    name: (fn(c), s if (name == "keys" and static is not None) else fn(s))
                    for name, (c, s) in self.stored.items()
                }

        def crop(self, max_length: int) -> None:
            if max_length < 0:
                max_length = self.get_seq_length() - abs(max_length)
            self._apply(lambda t: t[..., :max_length, :])

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._apply(lambda t: t[indices, ...])

        def reset(self) -> None:
            if self.is_initialized:
                self._apply(lambda t: t[..., :0, :])

        def offload(self) -> None:
            self._apply(lambda t: t.to("cpu"))

        def prefetch(self) -> None:
            pass

        @property
        def nbytes(self) -> int:
            """Bytes the layer holds: codes and scales of every cached key and value."""
            if not self.is_initialized:
                return 0
            return sum(c.numel() * c.element_size() + s.numel() * s.element_size() for c, s in self.stored.values())

    QuantizedKVLayer.__name__ = QuantizedKVLayer.__qualname__ = f"Int{bits}KVLayer"
    return QuantizedKVLayer


_CLASSES: dict[int, type[Any]] = {}


def quantized_kv_cache(bits: int, key_scales: torch.Tensor | None = None) -> Any:
    """A fresh transformers ``Cache`` whose layers hold ``bits``-bit codes (8 or 4); one per generation.

    ``key_scales`` (layers, key heads, head_dim), from :func:`calibrate_kv`: keys on static per-channel grids.

    Raises:
        UnsupportedError: bits other than 8 or 4. QuantaError: transformers is not installed.
    """
    _qmax(bits)
    if bits not in _CLASSES:
        _CLASSES[bits] = _layer_class(bits)
    cache_type = transformers_module().cache_utils.Cache
    if key_scales is None:
        return cache_type(layer_class_to_replicate=_CLASSES[bits])
    layers = []
    for scale in key_scales:
        layer = _CLASSES[bits]()
        layer.key_scale = scale
        layers.append(layer)
    return cache_type(layers=layers)


def kv_key_scales_of(model: nn.Module) -> torch.Tensor | None:
    """The calibrated key scales :func:`calibrate_kv` stored on ``model`` (or on the model it wraps), or None."""
    scales = getattr(model, KEY_SCALE_BUFFER, None)
    return scales if isinstance(scales, torch.Tensor) else None


def _recording_layer() -> type[Any]:
    dynamic_layer: Any = transformers_module().cache_utils.DynamicLayer

    class RecordingLayer(dynamic_layer):
        """A float cache layer that remembers the largest |key| per (head, channel) it has seen."""

        absmax: torch.Tensor | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            seen = key_states.detach().float().abs().amax(dim=(0, 2))  # (heads, head_dim)
            self.absmax = seen if self.absmax is None else torch.maximum(self.absmax, seen)
            return key_states, value_states

    return RecordingLayer


def calibrate_kv(model: nn.Module, steps: list[Any], bits: int) -> torch.Tensor:
    """Static per-(layer, key head, channel) key scales ``max |k| / qmax`` over ``steps`` (token id tensors or
    forward keyword dicts), stored on ``model`` as the buffer :data:`KEY_SCALE_BUFFER` and returned.

    Raises:
        QuantaError: no steps, or the model never wrote to the cache (not a cached decoder).
    """
    qmax = _qmax(bits)
    if not steps:
        raise QuantaError("calibrate_kv needs calibration steps (token id tensors).")
    layer_type = _recording_layer()
    layers: list[Any] = []
    with torch.no_grad():
        for step in steps:
            cache = transformers_module().cache_utils.Cache(layer_class_to_replicate=layer_type)
            kwargs = dict(step) if isinstance(step, dict) else {"input_ids": step}
            model(**kwargs, cache=cache, use_cache=True)
            for i, layer in enumerate(cache.layers):
                if i == len(layers):
                    layers.append(layer.absmax)
                elif layer.absmax is not None:
                    layers[i] = torch.maximum(layers[i], layer.absmax)
    if not layers or any(a is None for a in layers):
        raise QuantaError(f"{type(model).__name__} wrote no keys to the cache: KV calibration needs a cached decoder.")
    scales = (torch.stack(layers) / qmax).to(SCALE_DTYPE)
    if hasattr(model, KEY_SCALE_BUFFER) and KEY_SCALE_BUFFER not in model._buffers:
        raise QuantaError(f"{type(model).__name__} already has an attribute {KEY_SCALE_BUFFER}.")
    model.register_buffer(KEY_SCALE_BUFFER, scales)
    return scales


def cache_nbytes(cache: Any) -> int:
    """Bytes a quantized cache holds (codes and scales over its layers)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise QuantaError(f"{type(cache).__name__} is not a transformers cache.")
    return sum(int(getattr(layer, "nbytes", 0)) for layer in layers)


class _WithKVCache(nn.Module):
    """``model`` called with a fresh quantized KV cache on every forward (for perplexity under the cache); its
    calibrated key scales are used when it has them."""

    def __init__(self, model: nn.Module, bits: int) -> None:
        super().__init__()
        self.model, self.bits = model, bits

    def forward(self, ids: torch.Tensor) -> Any:
        cache = quantized_kv_cache(self.bits, kv_key_scales_of(self.model))
        return self.model(ids, cache=cache, use_cache=True)


def with_kv_cache(model: nn.Module, bits: int | None) -> nn.Module:
    """``model`` itself without ``bits``, else a wrapper whose forward passes run through a ``bits``-bit cache."""
    return model if bits is None else _WithKVCache(model, bits)


def kv_bits_of(model: nn.Module) -> int | None:
    """The KV-cache bits the model's recipe asks for (``+kv8`` / ``+kv4``), or None."""
    recipe = getattr(model, "quanta_recipe", None)
    bits = recipe.get("kv_bits") if isinstance(recipe, dict) else None
    return None if bits is None else int(bits)
