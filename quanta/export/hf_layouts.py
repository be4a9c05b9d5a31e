"""Bit layouts of the Hugging Face quantized checkpoints: int32 words holding integer codes.

* compressed-tensors ``pack-quantized``: each row's codes, shifted to unsigned (``q + 2**(bits-1)``), form one
  dense little-endian bit stream (code ``i`` at bit ``i * bits``, codes may straddle two words), cut into
  ``ceil(cols * bits / 32)`` int32 words. Zero points are packed the same way down the columns (``dim=0``).
* GPTQ (AutoGPTQ / GPTQModel): ``qweight`` is ``(in * bits / 32, out)``: word ``r`` of column ``j`` holds input
  rows ``r * 32/bits + k`` at bits ``k * bits``; ``qzeros`` packs ``32/bits`` output columns per word likewise.
* AWQ (AutoAWQ GEMM): ``qweight`` is ``(in, out * bits / 32)``, output columns packed per word in the order
  ``[0, 2, 4, 6, 1, 3, 5, 7]`` (nibble ``i`` holds column ``AWQ_ORDER[i]`` of its block of 8); same for ``qzeros``.

Codes here are plain unsigned integers (int64 tensors); the callers apply each format's zero-point convention.
"""

from __future__ import annotations

import torch

from quanta.errors import CorruptDataError

__all__ = ["AWQ_ORDER", "pack_dense", "unpack_awq", "unpack_dense", "unpack_gptq_cols", "unpack_gptq_rows"]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_ROWS_PER_CHUNK = 1024  # bounds the (rows, words, 32) bit temporaries of the dense packer


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) as int32 bit patterns (two's complement wrap)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_dense(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``(rows, cols)`` codes of ``bits`` (1..8) bits into ``(rows, ceil(cols*bits/32))`` int32."""
    rows, cols = codes.shape
    words = -(-cols * bits // 32)
    shifts = torch.arange(bits, dtype=torch.int64)
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32, dtype=torch.int64)
    out = []
    for start in range(0, rows, _ROWS_PER_CHUNK):
        part = codes[start : start + _ROWS_PER_CHUNK].to(torch.int64)
        stream = ((part.unsqueeze(-1) >> shifts) & 1).reshape(part.shape[0], cols * bits)  # bit i*bits+k of a row
        stream = torch.nn.functional.pad(stream, (0, words * 32 - cols * bits))
        out.append(_to_int32((stream.reshape(-1, words, 32) * weights).sum(-1)))
    return torch.cat(out) if out else torch.zeros(0, words, dtype=torch.int32)


def unpack_dense(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_dense`: ``(rows, cols)`` unsigned codes as int64.

    Raises:
        CorruptDataError: the words cannot hold ``cols`` codes (the file does not match its ``weight_shape``).
    """
    rows, words = packed.shape
    if packed.dtype != torch.int32 or words != -(-cols * bits // 32):
        raise CorruptDataError(
            f"packed codes are {packed.dtype} {tuple(packed.shape)}; {cols} codes of {bits} bits a row need "
            f"{-(-cols * bits // 32)} int32 words a row. The checkpoint is damaged or its weight_shape is wrong."
        )
    shifts32 = torch.arange(32, dtype=torch.int64)
    weights = torch.ones(bits, dtype=torch.int64) << torch.arange(bits, dtype=torch.int64)
    out = []
    for start in range(0, rows, _ROWS_PER_CHUNK):
        part = packed[start : start + _ROWS_PER_CHUNK].to(torch.int64) & 0xFFFFFFFF
        stream = ((part.unsqueeze(-1) >> shifts32) & 1).reshape(part.shape[0], words * 32)[:, : cols * bits]
        out.append((stream.reshape(-1, cols, bits) * weights).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, cols, dtype=torch.int64)


def _fields(words: torch.Tensor, bits: int) -> torch.Tensor:
    """``(..., 32/bits)`` unsigned fields of each int32 word, lowest bits first."""
    if 32 % bits:
        raise CorruptDataError(f"{bits}-bit codes do not fill int32 words evenly; this layout reads 2, 4 or 8 bits.")
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    return (words.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)


def unpack_gptq_rows(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ ``qweight`` ``(in*bits/32, out)`` -> unsigned codes ``(in, out)``: fields of a word are consecutive rows."""
    fields = _fields(qweight, bits)  # (in/per, out, per)
    return fields.permute(0, 2, 1).reshape(-1, qweight.shape[1])


def unpack_gptq_cols(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ ``qzeros`` ``(groups, out*bits/32)`` -> unsigned ``(groups, out)``: fields are consecutive columns."""
    return _fields(qzeros, bits).reshape(qzeros.shape[0], -1)


def unpack_awq(packed: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """AWQ ``qweight``/``qzeros`` ``(n, out*bits/32)`` -> unsigned ``(n, out)``, undoing the interleaved order."""
    if bits != 4:
        raise CorruptDataError(f"AWQ GEMM checkpoints hold 4-bit codes, not {bits}-bit ones.")
    fields = _fields(packed, bits)  # (n, out/8, 8): field i holds column AWQ_ORDER[i] of the block
    cols = torch.empty_like(fields)
    cols[..., list(AWQ_ORDER)] = fields
    return cols.reshape(packed.shape[0], -1)
