"""The int8 / int4 KV cache (quanta.lm.kv_cache): exact codes, bytes held, and use inside transformers."""

from __future__ import annotations

from pathlib import Path

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


def test_calibrated_key_scales_are_the_per_channel_maxima_and_survive_save_load(tmp_path: Path) -> None:
    import quanta
    from quanta.lm.kv_cache import KEY_SCALE_BUFFER, calibrate_kv, kv_key_scales_of, quantize_kv_static

    model = _llama()
    g = torch.Generator().manual_seed(2)
    steps = [torch.randint(0, 96, (2, 16), generator=g) for _ in range(3)]
    plain_layers = []
    with torch.no_grad():
        for ids in steps:
            cache = transformers.DynamicCache()
            model(ids, cache=cache, use_cache=True)
            plain_layers.append([layer.keys.abs().amax(dim=(0, 2)) for layer in cache.layers])
    expected = torch.stack([torch.stack(per_step).amax(0) for per_step in zip(*plain_layers, strict=True)]) / 7
    scales = calibrate_kv(model, steps, 4)
    assert scales.shape == (2, 2, 16) and scales.dtype == torch.float16  # (layers, kv heads, head_dim)
    torch.testing.assert_close(scales.float(), expected, rtol=1e-3, atol=0)
    # a cache on these scales keeps key codes only: no per-token key scales
    cache = quantized_kv_cache(4, kv_key_scales_of(model))
    ids = steps[0]
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        reference = transformers.DynamicCache()
        model(ids, cache=reference, use_cache=True)
    codes, key_scale = cache.layers[0].stored["keys"]
    assert key_scale is cache.layers[0].key_scale  # one static scale, not one per token
    assert codes.dtype == torch.uint8 and codes.shape == (2, 2, 16, 8)
    assert torch.equal(codes, quantize_kv_static(reference.layers[0].keys, scales[0], 4))  # layer 0: same keys
    assert cache_nbytes(cache) == sum(  # codes, the values' per-token scales, the layer's one static key scale
        layer.stored["keys"][0].numel() + layer.stored["values"][0].numel() + 2 * layer.stored["values"][1].numel()
        + 2 * layer.key_scale.numel()
        for layer in cache.layers
    )  # fmt: skip
    quanta.quantize(model, "w8a16+kv4")
    calibrate_kv(model, steps, 4)
    loaded = quanta.load(quanta.save(model, tmp_path / "q"))
    assert torch.equal(getattr(loaded, KEY_SCALE_BUFFER), getattr(model, KEY_SCALE_BUFFER))
    with torch.no_grad():
        a = with_kv_cache(model, 4)(ids).logits
        b = with_kv_cache(loaded, 4)(ids).logits
    assert torch.equal(a, b)
