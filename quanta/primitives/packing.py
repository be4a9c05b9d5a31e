"""Bit packing of integer codes.

Codes of 1..8 bits are packed into a contiguous little-endian bit stream of uint8: code ``i`` occupies bits
``[i * bits, (i + 1) * bits)`` of the stream, least significant bit first. So 4-bit codes put the first code in
the low nibble, and 3-bit codes straddle byte boundaries with no padding between them. The stream is
``ceil(count * bits / 8)`` bytes long: exactly the theoretical size.

Codes of 9..16 bits are stored in a 16-bit container (int16 holding the raw bit pattern), two bytes per code.
Signed codes are stored as two's complement of their width and sign-extended when unpacked, so 8-bit signed
codes packed here are exactly the bytes of an int8 tensor.
"""

from __future__ import annotations

import torch

from quanta.errors import CorruptDataError, InvalidTensorError
from quanta.primitives.checks import check_bits

__all__ = ["pack", "packed_nbytes", "unpack"]


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that :func:`pack` uses for ``count`` codes of ``bits`` bits."""
    check_bits(bits)
    return -(-count * bits // 8) if bits <= 8 else 2 * count


def pack(codes: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """Pack integer codes into a flat tensor (uint8 stream for 1..8 bits, int16 for 9..16 bits).

    Args:
        codes: integer tensor of any shape, values in the ``bits``-wide signed or unsigned range.
        bits: code width, 1..16.
        signed: whether the codes are signed (stored as two's complement).

    Returns:
        A 1-D tensor of :func:`packed_nbytes` bytes.

    Example:
        >>> pack(torch.tensor([1, 2, 3]), bits=4)
        tensor([33,  3], dtype=torch.uint8)
    """
    check_bits(bits)
    if codes.is_floating_point() or codes.is_complex():
        raise InvalidTensorError(f"codes must be an integer tensor, got {codes.dtype}.")
    mask = (1 << bits) - 1
    raw = codes.reshape(-1).to(torch.int64) & mask  # two's complement pattern of the code's width
    if bits > 8:
        # Reinterpret the 16-bit pattern as int16 without overflow: values >= 2**15 wrap to negatives.
        return torch.where(raw >= 1 << 15, raw - (1 << 16), raw).to(torch.int16)
    count = raw.numel()
    if bits == 8:
        return raw.to(torch.uint8)
    # Eight codes of `bits` bits fill exactly `bits` bytes: assemble them in an int64 word, then split it.
    pad = (-count) % 8
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    shifts = torch.arange(8, device=raw.device, dtype=torch.int64) * bits
    words = (raw.reshape(-1, 8) << shifts).sum(dim=1, dtype=torch.int64)  # disjoint bits: sum == OR
    byte_shifts = torch.arange(bits, device=raw.device, dtype=torch.int64) * 8
    stream = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return stream[: packed_nbytes(count, bits)]


def unpack(packed: torch.Tensor, bits: int, count: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack`: return ``count`` codes as a 1-D int32 tensor.

    Raises:
        CorruptDataError: if ``packed`` does not hold exactly the bytes ``count`` codes need.
    """
    check_bits(bits)
    expected = packed_nbytes(count, bits)
    want_dtype = torch.int16 if bits > 8 else torch.uint8
    if packed.dtype != want_dtype or packed.dim() != 1 or packed.numel() * packed.element_size() != expected:
        raise CorruptDataError(
            f"packed codes are {packed.dtype} with {packed.numel()} elements, but {count} codes of {bits} bits "
            f"need a 1-D {want_dtype} tensor of {expected} bytes; the data is truncated or was packed differently."
        )
    if bits > 8:
        raw = packed.to(torch.int32) & 0xFFFF
    elif bits == 8:
        raw = packed.to(torch.int32)
    else:
        pad = (-packed.numel()) % bits
        stream = packed.to(torch.int64)
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
        words = (stream.reshape(-1, bits) << byte_shifts).sum(dim=1, dtype=torch.int64)
        shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
        raw = ((words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count].to(torch.int32)
    if signed:
        half = 1 << (bits - 1)
        raw = torch.where(raw >= half, raw - (1 << bits), raw)
    return raw
