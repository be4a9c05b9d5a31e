"""The int8 / int4 KV cache (quanta.lm.kv_cache): exact codes, bytes held, and use inside transformers."""

from __future__ import annotations

import pytest
import torch

from quanta.errors import UnsupportedError
from quanta.lm.kv_cache import cache_nbytes, dequantize_kv, quantize_kv, quantized_kv_cache, with_kv_cache

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_round_trip_within_half_a_step(bits: int) -> None:
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0)) * 3
    codes, scales = quantize_kv(x, bits)
    assert codes.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert codes.shape == (2, 3, 5, 8 if bits == 8 else 4) and scales.shape == (2, 3, 5, 1)
    assert scales.dtype == torch.float16
    x_hat = dequantize_kv(codes, scales, bits, torch.float32)
    qmax = 127 if bits == 8 else 7
    step = scales.float()
    # Half a step of rounding, plus the float16 rounding of the scale applied to at most qmax steps.
    bound = 0.5 * step + qmax * step * 2.0**-11 + 1e-6
    assert bool(((x_hat - x).abs() <= bound).all())
    # The largest |x| of each vector is on the grid's end (up to that scale rounding).
    assert bool(((x_hat.abs().amax(-1) - x.abs().amax(-1)).abs() <= qmax * step[..., 0] * 2.0**-10 + 1e-6).all())


def test_int4_codes_pack_two_per_byte_low_nibble_first() -> None:
    x = torch.tensor([[7.0, -7.0, 1.0, 0.0]])  # scale 1: codes 7, -7, 1, 0
    codes, _ = quantize_kv(x, 4)
    assert codes.tolist() == [[(7 + 8) | ((-7 + 8) << 4), (1 + 8) | ((0 + 8) << 4)]]
    with pytest.raises(UnsupportedError, match="odd"):
        quantize_kv(torch.ones(1, 3), 4)
    with pytest.raises(UnsupportedError, match="8 or 4"):
        quantize_kv(torch.ones(1, 4), 2)


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def test_the_cache_holds_codes_and_attention_reads_their_dequantized_values() -> None:
    model, ids = _llama(), torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    plain, quantized = transformers.DynamicCache(), quantized_kv_cache(8)
    with torch.no_grad():
        model(ids, cache=plain, use_cache=True)
        model(ids, cache=quantized, use_cache=True)
    assert len(quantized.layers) == 2 and quantized.get_seq_length() == 12
    for layer_plain, layer_q in zip(plain.layers, quantized.layers, strict=True):
        codes, _ = layer_q.stored["keys"]
        assert codes.dtype == torch.int8 and codes.shape == layer_plain.keys.shape  # (2, kv heads, 12, head_dim)
        # Layer 0's keys do not depend on the cache: they are exactly the plain keys' codes.
    first_codes, first_scales = quantize_kv(plain.layers[0].keys, 8)
    assert torch.equal(quantized.layers[0].stored["keys"][0], first_codes)
    assert torch.equal(quantized.layers[0].stored["keys"][1], first_scales)
    # Bytes: one int8 code per element plus one float16 scale per (row, head, token), keys and values.
    elements = sum(layer.keys.numel() + layer.values.numel() for layer in plain.layers)
    vectors = sum(layer.keys.shape[:-1].numel() + layer.values.shape[:-1].numel() for layer in plain.layers)
    assert cache_nbytes(quantized) == elements + 2 * vectors < 4 * elements


def test_generation_through_the_cache_and_perplexity_wrapper() -> None:
    model, ids = _llama(), torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(2))
    cache = quantized_kv_cache(8)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, cache=cache)
        logits = with_kv_cache(model, 8)(ids).logits
        plain = model(ids).logits
    assert out.shape == (1, 14) and cache.get_seq_length() == 13  # the last token is never fed back
    # int8 keys and values move the logits by far less than they spread.
    assert float((logits - plain).abs().max()) < 0.05 * float(plain.std())
    assert with_kv_cache(model, None) is model
