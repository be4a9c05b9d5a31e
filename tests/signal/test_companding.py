"""G.711 codecs bit-exact with the G.191 reference algorithm over every input; audioop cross-check; laws."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from quanta.errors import InvalidTensorError
from quanta.signal import (
    alaw_compress,
    alaw_decode,
    alaw_encode,
    alaw_expand,
    mulaw_compress,
    mulaw_decode,
    mulaw_encode,
    mulaw_expand,
    quantize_uniform,
    sqnr,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")

PCM = np.arange(-32768, 32768, dtype=np.int16)
CODES = np.arange(256, dtype=np.uint8)


def _g191_alaw(v: int) -> int:
    """G.191 alaw_compress, transcribed one sample at a time (the loop form of the reference)."""
    ix = (~v if v < 0 else v) >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix = ix - 16 + (iexp << 4)
    if v >= 0:
        ix |= 0x80
    return ix ^ 0x55


def _g191_ulaw(v: int) -> int:
    absno = min(((~v if v < 0 else v) >> 2) + 33, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    code = ((8 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return code | 0x80 if v >= 0 else code


def _g191_alaw_expand(c: int) -> int:
    ix = (c ^ 0x55) & 0x7F
    iexp, mant = ix >> 4, ix & 0x0F
    mant = ((mant + 16 if iexp > 0 else mant) << 4) + 8
    if iexp > 1:
        mant <<= iexp - 1
    return mant if c > 127 else -mant


def _g191_ulaw_expand(c: int) -> int:
    sign = -1 if c < 0x80 else 1
    inv = ~c
    exponent, mantissa = (inv >> 4) & 7, inv & 0x0F
    step = 4 << (exponent + 1)
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def test_alaw_encode_all_65536_inputs_bit_exact() -> None:
    assert alaw_encode(PCM).tolist() == [_g191_alaw(int(v)) for v in PCM]


def test_mulaw_encode_all_65536_inputs_bit_exact() -> None:
    assert mulaw_encode(PCM).tolist() == [_g191_ulaw(int(v)) for v in PCM]


def test_decode_all_256_codes_bit_exact() -> None:
    assert alaw_decode(CODES).tolist() == [_g191_alaw_expand(int(c)) for c in CODES]
    assert mulaw_decode(CODES).tolist() == [_g191_ulaw_expand(int(c)) for c in CODES]


def test_known_codes() -> None:
    assert mulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)).tolist() == [0xFF, 0x7F, 0x80, 0x00]
    assert mulaw_decode(np.array([0xFF, 0x7F], dtype=np.uint8)).tolist() == [0, 0]  # +0 and -0
    assert alaw_encode(np.array([0, -1], dtype=np.int16)).tolist() == [0xD5, 0x55]  # even bits inverted
    assert alaw_decode(np.array([0xD5, 0x55, 0xAA, 0x2A], dtype=np.uint8)).tolist() == [8, -8, 32256, -32256]


def test_encode_decode_encode_is_stable() -> None:
    assert alaw_encode(alaw_decode(CODES)).tolist() == CODES.tolist()  # every level encodes to its own code
    expected = CODES.copy()
    expected[0x7F] = 0xFF  # mu-law's negative zero decodes to 0, which encodes as positive zero
    assert mulaw_encode(mulaw_decode(CODES)).tolist() == expected.tolist()


def test_alaw_agrees_with_audioop_everywhere() -> None:
    ours = alaw_encode(PCM)
    theirs = np.frombuffer(audioop.lin2alaw(PCM.tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(alaw_decode(CODES), np.frombuffer(audioop.alaw2lin(CODES.tobytes(), 2), dtype=np.int16))
    assert np.array_equal(mulaw_decode(CODES), np.frombuffer(audioop.ulaw2lin(CODES.tobytes(), 2), dtype=np.int16))


def test_mulaw_differs_from_audioop_on_exactly_508_negative_threshold_samples() -> None:
    ours = mulaw_encode(PCM)
    theirs = np.frombuffer(audioop.lin2ulaw(PCM.tobytes(), 2), dtype=np.uint8)
    diff = ours != theirs
    x = PCM[diff].astype(np.int64)
    assert diff.sum() == 508 and (x < 0).all()
    q = (x >> 2) * 4  # the sample on mu-law's 14-bit grid
    assert len(np.unique(q)) == 127 and np.array_equal(np.unique(x >> 2, return_counts=True)[1], np.full(127, 4))
    # q is a decision threshold: +|q| starts a new cell; G.191 puts -|q| in the cell nearer zero, audioop farther
    up = mulaw_encode((-q).astype(np.int16)) & 0x7F
    below = mulaw_encode((-q - 4).astype(np.int16)) & 0x7F
    assert (up != below).all()
    assert np.array_equal(ours[diff], below) and np.array_equal(theirs[diff], up)
    g, a = mulaw_decode(ours[diff]).astype(np.int64), mulaw_decode(theirs[diff]).astype(np.int64)
    assert (np.abs(g) < np.abs(a)).all()
    halfway = np.abs(q - g) == np.abs(q - a)  # inside a segment the threshold is the midpoint of two levels
    assert halfway.sum() == 480  # the other 28 (7 groups) sit on segment edges, where cells differ in size


def test_continuous_laws_round_trip_and_endpoints() -> None:
    x = np.linspace(-1, 1, 2001)
    assert np.allclose(mulaw_expand(mulaw_compress(x)), x, atol=1e-12)
    assert np.allclose(alaw_expand(alaw_compress(x)), x, atol=1e-12)
    assert mulaw_compress(np.array([1.0, -1.0, 0.0])).tolist() == [1.0, -1.0, 0.0]
    a = alaw_compress(np.array([1 / 87.6]))
    assert float(a[0]) == pytest.approx(1 / (1 + math.log(87.6)))  # the two pieces meet
    assert isinstance(mulaw_compress(torch.zeros(3)), torch.Tensor)


def test_mulaw_keeps_32db_from_0_to_minus_40_dbfs_where_uniform_8bit_falls() -> None:
    n = 1 << 14
    t = np.arange(n)
    worst = math.inf
    for level in range(0, -41, -1):
        x = 32767 * 10 ** (level / 20) * np.sin(2 * np.pi * (math.sqrt(5) / 37) * t + 0.1)
        pcm = np.round(x).astype(np.int16)
        worst = min(worst, sqnr(pcm.astype(np.float64), mulaw_decode(mulaw_encode(pcm)).astype(np.float64)))
    assert worst >= 32.0
    x = 32767 * 0.01 * np.sin(2 * np.pi * (math.sqrt(5) / 37) * t + 0.1)
    uniform = sqnr(x, quantize_uniform(x, 8, full_scale=32768).values)
    assert uniform < 12.0


def test_non_int16_pcm_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidTensorError, match="int16"):
        mulaw_encode(np.zeros(4))
    with pytest.raises(InvalidTensorError, match="astype"):
        alaw_encode(np.zeros(4, dtype=np.int32))
    with pytest.raises(InvalidTensorError, match="uint8"):
        mulaw_decode(np.zeros(4, dtype=np.int16))
    out = mulaw_encode(torch.zeros(4, dtype=torch.int16))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
