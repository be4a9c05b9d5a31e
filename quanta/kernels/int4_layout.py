"""torch's CPU int4-packed weight layout, and exact conversions to and from quanta's canonical nibble stream.

Canonical (quanta, :mod:`quanta.primitives.packing`): an ``[N, K]`` matrix of 4-bit codes, row-major, two codes a
byte, the first code in the low nibble: ``byte[n, j] = code[n, 2j] | code[n, 2j + 1] << 4``. Signed ``int4``
codes are two's complement nibbles; torch's kernel reads unsigned nibbles ``u`` and decodes ``(u - 8) * scale +
zero``, so for signed codes ``u = q + 8``, which is the nibble XOR 8 (one byte-wise XOR ``0x88``).

torch (``aten._convert_weight_to_int4pack_for_cpu``, worked out on small matrices and matching
``aten/src/ATen/native/cpu/int4mm_kernel.cpp``): rows are cut into blocks of ``BLOCK_N`` (64 with AVX-512, 32
with AVX2 or no vector unit; the last block may be 16, 32 or 48 rows). A block of ``nb`` rows is ``K * nb / 2``
bytes, k-major: for each column ``k``, ``nb / 2`` bytes. In a full block on AVX-512/AVX2 byte ``d`` pairs rows
``d`` (low nibble) and ``d + nb / 2`` (high nibble); in a partial block (and everywhere without a vector unit)
byte ``d`` pairs rows ``2d`` and ``2d + 1``. The same number of bytes as the canonical stream: a permutation.

The variant depends on the CPU capability torch dispatches to at run time, so :func:`torch_layout` probes torch's
own converter once and picks the variant that reproduces it; files always hold the canonical stream.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["Int4Layout", "from_torch_int4pack", "to_torch_int4pack", "torch_layout"]


@dataclass(frozen=True)
class Int4Layout:
    """One variant of torch's packed layout: row blocks of ``block_n``; full blocks pair ``d`` with ``d + n/2``."""

    block_n: int
    paired: bool


# AVX-512, AVX2, then the plain C++ loop (consecutive pairs everywhere).
_CANDIDATES = (Int4Layout(64, True), Int4Layout(32, True), Int4Layout(32, False))


def _blocks(n_rows: int, layout: Int4Layout) -> list[tuple[int, int, int, bool]]:
    """``(first row, rows, block rows, paired)`` of each run of equal blocks: the full blocks, then the tail."""
    full = n_rows // layout.block_n * layout.block_n
    runs = [(0, full, layout.block_n, layout.paired)] if full else []
    if n_rows > full:
        runs.append((full, n_rows - full, n_rows - full, False))
    return runs


def _unpack_nibbles(stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return stream & 0x0F, stream >> 4


def to_torch_int4pack(codes: torch.Tensor, n_rows: int, n_cols: int, layout: Int4Layout, signed: bool) -> torch.Tensor:
    """Canonical nibble stream (1-D uint8, ``n_rows * n_cols / 2`` bytes) -> torch's packed bytes (1-D uint8).

    ``signed``: the codes are two's complement int4 (flipped to torch's ``u = q + 8``); else unsigned ``0..15``.
    """
    stream = codes ^ 0x88 if signed else codes
    # (N, K) unsigned nibbles, one a byte: a transient 2x the packed size.
    lo, hi = _unpack_nibbles(stream.reshape(n_rows, n_cols // 2))
    u = torch.stack([lo, hi], dim=-1).reshape(n_rows, n_cols)
    parts = []
    for start, rows, nb, paired in _blocks(n_rows, layout):
        block = u[start : start + rows].reshape(rows // nb, nb, n_cols)
        if paired:  # byte d of column k: rows d | d + nb/2
            low, high = block[:, : nb // 2], block[:, nb // 2 :]
        else:  # byte d of column k: rows 2d | 2d + 1
            low, high = block[:, 0::2], block[:, 1::2]
        # (blocks, nb/2, K) -> k-major (blocks, K, nb/2)
        parts.append((low | (high << 4)).transpose(1, 2).reshape(-1))
    return torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()


def from_torch_int4pack(
    packed: torch.Tensor, n_rows: int, n_cols: int, layout: Int4Layout, signed: bool
) -> torch.Tensor:
    """Exact inverse of :func:`to_torch_int4pack`: torch's packed bytes -> the canonical nibble stream."""
    flat = packed.reshape(-1)
    rows_out = []
    offset = 0
    for _, rows, nb, paired in _blocks(n_rows, layout):
        size = rows * n_cols // 2
        chunk = flat[offset : offset + size].reshape(rows // nb, n_cols, nb // 2).transpose(1, 2)  # (blocks, nb/2, K)
        offset += size
        lo, hi = _unpack_nibbles(chunk)
        block = torch.cat([lo, hi], dim=1) if paired else torch.stack([lo, hi], dim=2).reshape(-1, nb, n_cols)
        rows_out.append(block.reshape(rows, n_cols))
    u = torch.cat(rows_out) if len(rows_out) > 1 else rows_out[0]
    stream = (u[:, 0::2] | (u[:, 1::2] << 4)).reshape(-1)
    return stream ^ 0x88 if signed else stream.contiguous()


@functools.cache
def torch_layout() -> Int4Layout | None:
    """The variant torch's converter uses in this process, found by packing a probe matrix; ``None`` when the op is
    missing or no known variant reproduces it (then the int4 kernel is not used)."""
    convert = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    if convert is None:
        return None
    # 112 rows = 64 + 48 (AVX-512: one full and one partial block) = 3 * 32 + 16 (AVX2 and plain).
    n_rows, n_cols = 112, 64
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, 16, (n_rows, n_cols), generator=gen, dtype=torch.int32)
    try:
        expected = convert(u, 2).reshape(-1)
    except RuntimeError:
        return None
    canonical = (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8).reshape(-1)
    for layout in _CANDIDATES:
        if torch.equal(to_torch_int4pack(canonical, n_rows, n_cols, layout, signed=False), expected):
            return layout
    return None
