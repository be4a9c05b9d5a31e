"""The byte layout of ggml's quantized blocks (Q8_0, Q4_0, Q4_1, Q4_K): fields <-> bytes, nothing else.

Each block type is a table of facts (values per block, bytes per block) plus a pack and an unpack function
between the block's fields (numpy arrays, one entry per block) and its bytes, as ggml lays them out
(``ggml-common.h``)::

    Q8_0  32 values, 34 bytes:  d (fp16) | 32 x int8 q                       x = d * q
    Q4_0  32 values, 18 bytes:  d (fp16) | 16 bytes of nibbles               x = d * (q - 8)
    Q4_1  32 values, 20 bytes:  d (fp16) | m (fp16) | 16 bytes of nibbles    x = d * q + m
    Q4_K 256 values, 144 bytes: d, dmin (fp16) | 12 bytes: 8 x (6-bit sc, 6-bit mn) | 128 bytes of nibbles
                                x = (d * sc_j) * q - dmin * mn_j   for sub-block j (32 values)

Nibbles of a 32-value block: byte ``i`` holds value ``i`` in its low half and value ``i + 16`` in its high
half. Q4_K's 128 bytes are four chunks of 32 bytes; chunk ``c`` holds sub-block ``2c`` in the low halves and
``2c + 1`` in the high halves. Fields are checked by the caller (:mod:`quanta.export.gguf_codec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCKS", "BlockType", "pack", "unpack"]

Fields = dict[str, np.ndarray]


@dataclass(frozen=True)
class BlockType:
    """One ggml block type: its name, values per block and bytes per block."""

    name: str
    values: int
    nbytes: int


BLOCKS = {
    "Q8_0": BlockType("Q8_0", 32, 34),
    "Q4_0": BlockType("Q4_0", 32, 18),
    "Q4_1": BlockType("Q4_1", 32, 20),
    "Q4_K": BlockType("Q4_K", 256, 144),
}


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    """``(n,)`` fp16 values as ``(n, 2)`` little-endian bytes."""
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(-1, 2)


def _fp16_of(b: np.ndarray) -> np.ndarray:
    """``(n, 2)`` bytes back to ``(n,)`` fp16 values."""
    return np.ascontiguousarray(b).view("<f2").reshape(-1).astype(np.float16)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """``(n, 32)`` values 0..15 -> ``(n, 16)`` bytes: value i low, value i + 16 high."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_nibbles(b: np.ndarray) -> np.ndarray:
    """``(n, 16)`` bytes -> ``(n, 32)`` values 0..15."""
    return np.concatenate([b & 0x0F, b >> 4], axis=1)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """``(n, 8)`` 6-bit scales and mins -> ``(n, 12)`` bytes (ggml's ``get_scale_min_k4`` layout)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)  # low 6 bits: sc 0..3; top 2: bits 4-5 of sc 4..7
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _unpack_k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low_sc, low_mn, rest = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = np.concatenate([low_sc & 0x3F, (rest & 0x0F) | ((low_sc >> 6) << 4)], axis=1)
    mn = np.concatenate([low_mn & 0x3F, (rest >> 4) | ((low_mn >> 6) << 4)], axis=1)
    return sc, mn


def pack(kind: str, fields: Fields) -> np.ndarray:
    """The ``(n_blocks, nbytes)`` uint8 bytes of ``kind`` blocks from their fields.

    Args:
        kind: ``Q8_0``, ``Q4_0``, ``Q4_1`` or ``Q4_K``.
        fields: ``d`` (and ``m`` for Q4_1; ``dmin``, ``sc``, ``mn`` for Q4_K) per block, and ``q``:
            ``(n_blocks, values)`` codes (int8 for Q8_0, 0..15 otherwise).

    Returns:
        The blocks' bytes, one row per block.
    """
    d = _fp16_bytes(fields["d"])
    q = fields["q"]
    if kind == "Q8_0":
        return np.concatenate([d, q.astype(np.int8).view(np.uint8)], axis=1)
    if kind == "Q4_0":
        return np.concatenate([d, _pack_nibbles(q)], axis=1)
    if kind == "Q4_1":
        return np.concatenate([d, _fp16_bytes(fields["m"]), _pack_nibbles(q)], axis=1)
    n = q.shape[0]
    chunks = q.reshape(n, 4, 2, 32).astype(np.uint8)  # (block, chunk, low/high half, byte)
    nibbles = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, 128)
    scales = _pack_k_scales(fields["sc"], fields["mn"])
    return np.concatenate([d, _fp16_bytes(fields["dmin"]), scales, nibbles], axis=1)


def unpack(kind: str, blocks: np.ndarray) -> Fields:
    """Invert :func:`pack`: the fields of ``(n_blocks, nbytes)`` uint8 ``kind`` blocks."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8)
    d = _fp16_of(b[:, 0:2])
    if kind == "Q8_0":
        return {"d": d, "q": b[:, 2:].view(np.int8).copy()}
    if kind == "Q4_0":
        return {"d": d, "q": _unpack_nibbles(b[:, 2:])}
    if kind == "Q4_1":
        return {"d": d, "m": _fp16_of(b[:, 2:4]), "q": _unpack_nibbles(b[:, 4:])}
    n = b.shape[0]
    sc, mn = _unpack_k_scales(b[:, 4:16])
    chunks = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return {"d": d, "dmin": _fp16_of(b[:, 2:4]), "sc": sc, "mn": mn, "q": (chunks & 0x0F).reshape(n, 256)}
