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
    flat = codes.reshape(-1)
    count = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8)  # integer casts wrap modulo 256: two's complement for signed codes
    if bits > 8:
        # Keep only the code's own bits, then reinterpret as int16 (the cast wraps modulo 2**16).
        return (flat.to(torch.int32) & ((1 << bits) - 1)).to(torch.int16)
    if 8 % bits == 0:
        # 1, 2 or 4 bits: whole codes per byte, combined in uint8 without widening.
        per = 8 // bits
        small = flat.to(torch.uint8) & ((1 << bits) - 1)
        pad = (-count) % per
        if pad:
            small = torch.cat([small, small.new_zeros(pad)])
        lanes = small.reshape(-1, per)
        out = lanes[:, 0].clone()
        for i in range(1, per):
            out |= lanes[:, i] << (bits * i)
        return out
    # 3, 5, 6 or 7 bits: eight codes fill exactly `bits` bytes; assemble them in an int64 word, then split it.
    raw = flat.to(torch.int64) & ((1 << bits) - 1)
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
    if bits == 8:
        return (packed.view(torch.int8) if signed else packed).to(torch.int32)
    if bits > 8:
        raw = packed.to(torch.int32) & ((1 << bits) - 1)
    elif 8 % bits == 0:
        per, mask = 8 // bits, (1 << bits) - 1
        if signed:
            # Shift the lane to the top of the byte, reinterpret as int8, then shift back arithmetically:
            # the sign bit is extended for free.
            top = 8 - bits
            lanes = [((packed << (top - bits * i)).view(torch.int8) >> top) for i in range(per)]
            return torch.stack(lanes, dim=1).reshape(-1)[:count].to(torch.int32)
        lanes = [(packed >> (bits * i)) & mask for i in range(per)]
        raw = torch.stack(lanes, dim=1).reshape(-1)[:count].to(torch.int32)
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
