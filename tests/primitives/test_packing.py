import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quanta.errors import BitWidthError, CorruptDataError
from quanta.primitives.packing import pack, packed_nbytes, unpack


def reference_pack(codes: list[int], bits: int) -> bytes:
    """Independent reference: one Python integer as a little-endian bit stream, code i at bits [i*b, (i+1)*b)."""
    stream = 0
    for i, c in enumerate(codes):
        stream |= (c & ((1 << bits) - 1)) << (i * bits)
    return stream.to_bytes(-(-len(codes) * bits // 8), "little")


@st.composite
def codes_and_bits(draw: st.DrawFn) -> tuple[list[int], int, bool]:
    bits = draw(st.integers(1, 16))
    signed = draw(st.booleans())
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=70))
    return codes, bits, signed


@given(codes_and_bits())
def test_unpack_inverts_pack(case: tuple[list[int], int, bool]) -> None:
    codes, bits, signed = case
    packed = pack(torch.tensor(codes), bits, signed)
    assert packed.numel() * packed.element_size() == packed_nbytes(len(codes), bits)
    assert unpack(packed, bits, len(codes), signed).tolist() == codes


@given(codes_and_bits())
def test_sub_byte_layout_matches_reference_bit_stream(case: tuple[list[int], int, bool]) -> None:
    codes, bits, signed = case
    if bits > 8:
        return
    assert bytes(pack(torch.tensor(codes), bits, signed).tolist()) == reference_pack(codes, bits)


@pytest.mark.parametrize("bits", range(1, 9))
def test_size_is_exactly_theoretical(bits: int) -> None:
    for count in (1, 7, 8, 9, 1000, 1001):
        assert pack(torch.zeros(count, dtype=torch.int32), bits).numel() == -(-count * bits // 8)


def test_wide_codes_use_two_byte_container() -> None:
    codes = torch.tensor([0, 1, 4095, 2048])
    packed = pack(codes, 12)
    assert packed.dtype == torch.int16 and packed.numel() == 4
    assert unpack(packed, 12, 4).tolist() == codes.tolist()


def test_signed_8_bit_codes_are_int8_bytes() -> None:
    codes = torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8)
    assert torch.equal(pack(codes, 8, signed=True), codes.view(torch.uint8))


def test_nibble_order() -> None:
    assert pack(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]


def test_truncated_stream_is_rejected() -> None:
    packed = pack(torch.arange(8) % 8, 3)
    with pytest.raises(CorruptDataError, match="truncated"):
        unpack(packed[:-1], 3, 8)


def test_bits_out_of_range() -> None:
    with pytest.raises(BitWidthError, match="1 to 16"):
        pack(torch.zeros(4, dtype=torch.int32), 17)
    with pytest.raises(BitWidthError):
        pack(torch.zeros(4, dtype=torch.int32), 0)
