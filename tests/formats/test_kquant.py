"""The ``q4_k`` format against the independent reference, the ``gguf`` package's Q4_K dequantizer, and its own
closed forms (half a sub-block step, nearest level of each sub-block's grid, 144 bytes per 256 values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quanta
from quanta.errors import UnsupportedError
from quanta.formats.kquant import sub_codes_of, sub_codes_param
from quanta.primitives.packing import pack
from quanta.recipe import preset
from quanta.scheme import QScheme

gguf = pytest.importorskip("gguf")
SCHEME = QScheme.parse("q4_k:g256:sf16")
Q4_K = gguf.GGMLQuantizationType.Q4_K


def _random_blocks(n: int, seed: int) -> np.ndarray:
    """``n`` Q4_K blocks of random bytes, with finite d and dmin (some negative, some zero)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    scales = (rng.standard_normal((n, 2)) * 1e-3).astype(np.float16)
    scales[::7] = 0
    blocks[:, 0:4] = scales.view(np.uint8)
    return blocks


def _qtensor_of_blocks(blocks: np.ndarray, rows: int) -> quanta.QTensor:
    """A q4_k QTensor of the blocks, unpacked with gguf's own Q4_K helpers and ggml's nibble order."""
    n = blocks.shape[0]
    d = torch.from_numpy(blocks[:, 0:2].copy().view(np.float16).reshape(-1))
    dmin = torch.from_numpy(blocks[:, 2:4].copy().view(np.float16).reshape(-1))
    sc, mn = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
    # 128 bytes = 4 chunks of 32; chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high ones.
    qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = torch.from_numpy((qs & 0x0F).reshape(-1).astype(np.int32))
    per_row = n // rows
    params = {
        "d": d.reshape(rows, per_row),
        "dmin": dmin.reshape(rows, per_row),
        "sub_codes": sub_codes_param(
            torch.from_numpy(sc.astype(np.int32)), torch.from_numpy(mn.astype(np.int32))
        ).reshape(rows, per_row, 12),
    }
    return quanta.QTensor(pack(q, 4), params, SCHEME, torch.Size((rows, per_row * 256)))


def test_decode_equals_gguf_dequantize_bit_for_bit() -> None:
    blocks = _random_blocks(24, seed=0)
    qt = _qtensor_of_blocks(blocks, rows=6)
    reference = gguf.quants.dequantize(blocks.reshape(-1), Q4_K).reshape(6, 1024)
    assert torch.equal(qt.dequantize(), torch.from_numpy(reference))


def test_sub_codes_round_trip_through_the_gguf_layout() -> None:
    blocks = _random_blocks(10, seed=1)
    sc, mn = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
    got_sc, got_mn = sub_codes_of(sub_codes_param(torch.from_numpy(sc.astype(np.int32)), torch.from_numpy(mn)))
    assert np.array_equal(got_sc.numpy(), sc) and np.array_equal(got_mn.numpy(), mn)


def _grids(qt: quanta.QTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value's sub-block step ``d * sc`` and lowest level ``-dmin * mn``, shaped like the tensor."""
    sc, mn = sub_codes_of(qt.params["sub_codes"])  # (rows, n, 8)
    step = qt.params["d"].float().unsqueeze(-1) * sc.float()
    low = -qt.params["dmin"].float().unsqueeze(-1) * mn.float()
    rows = qt.shape[0]
    return (step.repeat_interleave(32, -1).reshape(rows, -1), low.repeat_interleave(32, -1).reshape(rows, -1))


def _weights(seed: int, shape: tuple[int, int] = (16, 512)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Heavy-ish tails and rows of different scales, like trained weights.
    return torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 0.1 + 0.01


def test_each_value_gets_the_nearest_level_of_its_sub_block() -> None:
    x = _weights(2)
    qt = quanta.quantize_tensor(x, SCHEME)
    step, low = _grids(qt)
    levels = low.unsqueeze(-1) + step.unsqueeze(-1) * torch.arange(16.0)  # (rows, cols, 16), every level
    best = (x.unsqueeze(-1) - levels).abs().amin(-1)
    err = (x - qt.dequantize()).abs()
    assert torch.all(err <= best + 1e-6 * x.abs().max())
    inside = (x >= low) & (x <= low + 15 * step)  # the search may clip extremes where that lowers the error
    # Inside its sub-block's grid, every value is within half a step (fp32 rounding of the levels aside).
    assert torch.all(err[inside] <= step[inside] / 2 * (1 + 2**-20) + 2**-23 * x.abs().max())


def test_encoding_the_decoded_values_gives_the_same_codes() -> None:
    qt = quanta.quantize_tensor(_weights(3), SCHEME)
    blocks = qt.dequantize().reshape(qt.shape[0], -1, 256)
    codes = SCHEME.fmt.encode(blocks, qt.params, SCHEME, None).reshape(qt.shape)
    assert torch.equal(codes, qt.unpacked_codes())


def test_nbytes_is_q4_k_block_size() -> None:
    values, block_bytes = gguf.GGML_QUANT_SIZES[Q4_K]  # (256, 144)
    qt = quanta.quantize_tensor(torch.randn(8, 1024), SCHEME)
    assert qt.nbytes == 8 * 1024 // values * block_bytes
    assert qt.bits_per_value == 4.5


def test_fp32_super_scales_cost_four_more_bytes_per_block() -> None:
    qt = quanta.quantize_tensor(torch.randn(2, 512), "q4_k:g256")
    assert qt.params["d"].dtype == torch.float32
    assert qt.nbytes == 2 * 2 * (144 + 4)


def test_a_short_last_super_block_is_coded_on_its_own_values() -> None:
    x = _weights(4, (3, 300))
    whole = quanta.quantize_tensor(x, SCHEME)
    head = quanta.quantize_tensor(x[:, :256].contiguous(), SCHEME)
    tail = quanta.quantize_tensor(x[:, 256:].contiguous(), SCHEME)
    assert torch.equal(whole.dequantize(), torch.cat([head.dequantize(), tail.dequantize()], dim=1))
    sc, mn = sub_codes_of(whole.params["sub_codes"][:, 1])
    assert bool((sc[:, 2:] == 0).all()) and bool((mn[:, 2:] == 0).all())  # sub-blocks past value 300: unused


@pytest.mark.parametrize("scheme", ["q4_k", "q4_k:ch", "q4_k:g128:sf16", "q4_k:g32"])
def test_granularity_other_than_g256_is_refused(scheme: str) -> None:
    with pytest.raises(UnsupportedError, match="g256"):
        quanta.quantize_tensor(torch.randn(4, 512), scheme)


def test_rows_not_a_multiple_of_256_have_no_q4_k_form() -> None:
    from quanta.export.gguf_codec import encode, lossless_type

    qt = quanta.quantize_tensor(torch.randn(4, 320), SCHEME)
    kind, reason = lossless_type(qt)
    assert kind is None and "multiple of 256" in reason
    with pytest.raises(UnsupportedError, match="Q4_K"):
        encode(qt, "Q4_K")


def test_preset_and_scheme_string() -> None:
    rule = preset("q4_k").rules[-1]
    assert str(rule.weight) == "q4_k:g256:sf16" and rule.activation is None
    assert str(QScheme.parse("Q4_K:g256:sf16")) == "q4_k:g256:sf16"


def test_q4_k_is_not_worse_than_q4_1_on_gaussian_weights() -> None:
    # 4.5 bits a weight against Q4_1's 5: the searched sub-block grids must still match its error.
    x = _weights(5, (32, 1024))
    err_k = (quanta.quantize_tensor(x, SCHEME).dequantize() - x).pow(2).sum()
    err_1 = (quanta.quantize_tensor(x, "int4:g32:fmin:sf16").dequantize() - x).pow(2).sum()
    assert err_k <= err_1


def test_a_packed_linear_runs_the_reference_path_on_the_dequantized_weight() -> None:
    from quanta.recipe import Recipe, Rule

    torch.manual_seed(0)
    model = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(512, 64)), Recipe((Rule("*", weight=SCHEME),)))
    layer = model[0]
    assert layer.kernel == "reference"  # no fast kernel claims q4_k: none computes its grids exactly
    x = torch.randn(3, 512)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.qweight.dequantize(), layer.bias))
