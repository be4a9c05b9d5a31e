"""ProductQuantizer and OPQ: faiss's code layout, exact cases, the encode-twice property, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quanta.errors import BitWidthError, InvalidTensorError, NonFiniteError, SchemeError
from quanta.vq import NotFittedError, ProductQuantizer, code_bytes, pack_codes, unpack_codes


def _bitstream(codes: list[int], nbits: int) -> list[int]:
    """Reference writer: little-endian bit stream, least significant bit first, zero-padded to whole bytes."""
    value = sum(c << (i * nbits) for i, c in enumerate(codes))
    return list(value.to_bytes(code_bytes(len(codes), nbits), "little"))


@given(st.integers(1, 16), st.integers(1, 12), st.integers(0, 2**31))
def test_pack_matches_the_reference_bitstream_and_round_trips(nbits: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(rng.integers(0, 1 << nbits, size=(3, m)))
    packed = pack_codes(codes, nbits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, code_bytes(m, nbits))
    assert packed.tolist() == [_bitstream(row, nbits) for row in codes.tolist()]
    assert torch.equal(unpack_codes(packed, m, nbits), codes)


def test_code_size() -> None:
    assert [ProductQuantizer(m, b).code_size for m, b in [(8, 8), (16, 4), (5, 3), (7, 12)]] == [8, 8, 2, 11]


def test_nbits8_codes_are_the_nearest_sub_centroids(gaussian: np.ndarray) -> None:
    pq = ProductQuantizer(m=4, nbits=8).fit(gaussian)
    codes = pq.encode(gaussian[:50])
    sub = gaussian[:50].reshape(50, 4, 4)  # (n, m, dsub)
    cb = pq.codebooks_.numpy()  # (m, ksub, dsub)
    brute = ((sub[:, :, None] - cb[None]) ** 2).sum(axis=3).argmin(axis=2)  # (n, m)
    assert codes.dtype == np.uint8 and np.array_equal(codes, brute)


@pytest.mark.parametrize(("nbits", "opq"), [(8, False), (5, False), (5, True)])
def test_encode_decode_encode_is_stable(gaussian: np.ndarray, nbits: int, opq: bool) -> None:
    pq = ProductQuantizer(m=4, nbits=nbits, opq=opq, opq_iter=3).fit(gaussian)
    codes = pq.encode(gaussian)
    assert np.array_equal(pq.encode(pq.decode(codes)), codes)


def test_enough_entries_reconstruct_exactly() -> None:
    rng = np.random.default_rng(0)
    parts = rng.normal(size=(3, 4, 5)).astype(np.float32)  # 3 sub-spaces, 4 distinct sub-vectors each
    pick = rng.integers(0, 4, size=(300, 3))
    x = parts[np.arange(3), pick].reshape(300, 15)
    pq = ProductQuantizer(m=3, nbits=2).fit(x)  # ksub = 4 = distinct sub-vectors per sub-space
    # Each centre is the float32 mean of identical sub-vectors: exact up to the rounding of that mean.
    np.testing.assert_allclose(pq.decode(pq.encode(x)), x, rtol=1e-5, atol=1e-6)
    assert pq.reconstruction_mse(x) < 1e-9


def test_seeded_and_torch_in_torch_out(gaussian: np.ndarray) -> None:
    a = ProductQuantizer(4, 6, seed=5).fit(gaussian)
    b = ProductQuantizer(4, 6, seed=5).fit(torch.from_numpy(gaussian))
    assert torch.equal(a.codebooks_, b.codebooks_)
    codes = b.encode(torch.from_numpy(gaussian))
    assert isinstance(codes, torch.Tensor) and isinstance(b.decode(codes), torch.Tensor)


def test_opq_rotation_is_orthogonal_and_helps_on_correlated_data(gaussian: np.ndarray) -> None:
    plain = ProductQuantizer(m=4, nbits=4).fit(gaussian)
    opq = ProductQuantizer(m=4, nbits=4, opq=True, opq_iter=10).fit(gaussian)
    assert opq.rotation_ is not None
    torch.testing.assert_close(opq.rotation_ @ opq.rotation_.T, torch.eye(16), atol=1e-5, rtol=0)
    assert opq.reconstruction_mse(gaussian) < plain.reconstruction_mse(gaussian)


def test_padding_option(gaussian: np.ndarray) -> None:
    x = gaussian[:, :14]
    with pytest.raises(SchemeError, match="must divide the dimension d=14"):
        ProductQuantizer(m=4, nbits=4).fit(x)
    pq = ProductQuantizer(m=4, nbits=4, pad=True).fit(x)
    assert pq.dsub_ == 4 and pq.decode(pq.encode(x)).shape == (1200, 14)
    assert pq.reconstruction_mse(x) < float((x**2).sum(axis=1).mean())


def test_bad_input(gaussian: np.ndarray) -> None:
    with pytest.raises(InvalidTensorError, match="needs at least 256 training vectors, got 100"):
        ProductQuantizer(m=4, nbits=8).fit(gaussian[:100])
    with pytest.raises(BitWidthError):
        ProductQuantizer(m=4, nbits=0).fit(gaussian)
    with pytest.raises(BitWidthError):
        ProductQuantizer(m=4, nbits=17).fit(gaussian)
    with pytest.raises(NotFittedError):
        ProductQuantizer(m=4, nbits=4).encode(gaussian)
    with pytest.raises(NotFittedError):
        ProductQuantizer(m=4, nbits=4).decode(np.zeros((1, 2), np.uint8))
    bad = gaussian.copy()
    bad[3, 3] = np.nan
    with pytest.raises(NonFiniteError, match="row 3"):
        ProductQuantizer(m=4, nbits=4).fit(bad)
    pq = ProductQuantizer(m=4, nbits=4).fit(gaussian)
    with pytest.raises(NonFiniteError):
        pq.encode(bad)
    with pytest.raises(InvalidTensorError, match="fitted on 16"):
        pq.encode(gaussian[:, :8])
    with pytest.raises(InvalidTensorError, match="uint8 of shape"):
        pq.decode(np.zeros((2, 3), np.int64))


def test_opq_starts(gaussian: np.ndarray) -> None:
    errors = {
        start: ProductQuantizer(m=4, nbits=4, opq=True, opq_iter=4, opq_init=start)
        .fit(gaussian)
        .reconstruction_mse(gaussian)
        for start in ("identity", "random", "best")
    }
    assert errors["best"] <= max(errors["identity"], errors["random"]) * 1.001
    with pytest.raises(SchemeError, match="opq_init"):
        ProductQuantizer(m=4, nbits=4, opq=True, opq_init="pca").fit(gaussian)
