"""Lookup-table linear for vector-codebook weights (``vq{d}x{k}``, ``vq{d}x{k}r2``): gather partial products.

For a weight coded by a codebook, ``y[b, n] = sum_j <x[b, j], C[code[n, j]]>`` over the ``K / d`` input vectors
``x[b, j]``. The inner products of each input vector with every codebook entry form a small table, built once
per call (``B * K * k`` multiply-adds, the weight's ``N x K`` values are never formed); each output is then a sum
of table entries picked by the codes. Reading the codes as **bytes** makes that sum cheap: a byte of the packed
stream holds ``8 / e`` whole ``e``-bit stage indices (``e = log2(k)`` in 1, 2, 4, 8), so its contribution is one
of 256 values, and one table of 256 sums per byte position (``T[p, v]``, built from the inner products) turns
the output into ``N * K * bits / 8`` lookups, one per code byte, with no unpacking:

    y[b, n] = sum_p T[b, p, byte[n, p]]     # p over the K * bits / 8 bytes of row n

A residual code (``r2``) is the sum of its stages' entries, so its bytes index sums of both stages' products
(``vq4x16r2``: one byte = stage 1 in the low nibble, stage 2 in the high one).

The sum over bytes is a sparse product: a CSR matrix of one 1 per code byte at column ``256 p + byte`` times the
flattened table, through torch's sparse CPU matmul (MKL), in blocks of rows whose int32 column indices are made
per call and stay in cache: the module holds nothing beyond its canonical codes and codebooks (an int32 copy of
the indices would cost 4 bytes a code byte, more than the codes themselves). The table and the sums are fp32; the
output is cast to the input dtype.

Applies to per-tensor vq weights on a Linear whose rows start on a byte (``in_features * bits % 8 == 0``) and
are whole vectors (``in_features % d == 0``), with ``k`` = 2, 4, 16 or 256 (``vq2x16``, ``vq4x256``, ``vq8x256``,
``vq4x16r2``, ``vq4x256r2``, ...). Other codebook sizes (``vq2x64``: 6-bit indices that straddle bytes) and
per-channel or per-group codebooks take the reference path.

Batch rule: the lookups scale with the number of input rows and the matmul does not, so inputs of more than
:data:`LUT_MAX_ROWS` rows are served by a fast dequantization instead (the same byte tables hold each byte's
decoded values: one gather writes the ``N x K`` weight, then ``F.linear``), which equals the reference path
exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from quanta.formats.vector import VectorFormat
from quanta.kernels.base import Kernel, register_kernel
from quanta.scheme import QScheme

__all__ = ["LUT_MAX_ROWS", "VQ_LUT", "dequantize_bytes", "lut_linear"]

LUT_MAX_ROWS = 4
"""Input rows up to which the lookup path runs; above it the fast dequantization (measured in
``benchmarks/bench_linear.py --vq-only`` at 2048 x 2048: the lookups still win at 4 rows, and lose at 16 for all
formats but ``vq8x256``)."""
CHUNK = 1 << 16
"""Code bytes per block of rows: the block's int32 column indices (256 KiB) stay in the CPU's L2 cache."""


@dataclass(frozen=True)
class _Bytes:
    """How the packed stream of a vq weight splits into bytes: the facts the tables are built from."""

    dim: int  # d: values per vector
    entries: int  # k: entries per codebook
    stages: int  # 1, or 2 for r2
    per_byte: int  # u: stage indices in one byte
    row_bytes: int  # bytes per weight row: K * bits / 8

    @property
    def classes(self) -> int:
        """Byte positions with different tables for decoding: 2 when a byte holds one stage of alternating ones."""
        return 2 if self.stages == 2 and self.per_byte == 1 else 1


def _bytes(scheme: QScheme, shape: torch.Size) -> _Bytes | None:
    fmt = scheme.fmt
    if not isinstance(fmt, VectorFormat) or scheme.granularity != "tensor" or len(shape) != 2:
        return None
    in_features = int(shape[1])
    if 8 % fmt.entry_bits or in_features % fmt.dim or (in_features * fmt.bits) % 8:
        return None
    return _Bytes(fmt.dim, fmt.entries, fmt.stages, 8 // fmt.entry_bits, in_features * fmt.bits // 8)


def _applies(scheme: QScheme, shape: torch.Size) -> bool:
    return _bytes(scheme, shape) is not None and hasattr(torch, "sparse_csr_tensor")


def _books(module: Any) -> list[torch.Tensor]:
    """The stages' codebooks, fp32 ``(k, d)`` each."""
    names = ["codebook", "codebook2"][: module.weight_scheme.fmt.stages]
    return [getattr(module, f"weight_{name}").float().reshape(-1, module.weight_scheme.fmt.dim) for name in names]


def _byte_table(fields: torch.Tensor, per_byte: int) -> torch.Tensor:
    """Sums over each byte's stage indices ``(..., P * u, k)`` -> ``(..., P, k**u)``; index ``sum_i c_i k**i``."""
    k = fields.shape[-1]
    grouped = fields.unflatten(-2, (-1, per_byte))  # (..., P, u, k): the u indices of each byte, low bits first
    table = grouped[..., 0, :]
    for i in range(1, per_byte):  # index i holds the higher bits: it varies slowest
        table = (grouped[..., i, :, None] + table[..., None, :]).flatten(-2)
    assert table.shape[-1] == k**per_byte == 256
    return table


def _lut_table(x2d: torch.Tensor, books: list[torch.Tensor], layout: _Bytes) -> torch.Tensor:
    """The lookup table ``(row_bytes * 256, B)`` for inputs ``x2d`` ``(B, K)``, fp32."""
    vectors = x2d.float().unflatten(1, (-1, layout.dim))  # (B, K / d, d)
    # Inner products of every input vector with every entry, stage indices in stream order: (B, K / d * s, k).
    fields = torch.stack([vectors @ book.t() for book in books], dim=2).flatten(1, 2)
    table = _byte_table(fields, layout.per_byte).flatten(1)  # (B, P * 256)
    # (P * 256, B), one row per entry, row-major. For B = 1 a reshape gives that for free; ``.t().contiguous()``
    # would keep the transposed strides of the size-1 dim, and the sparse matmul then copies the whole table for
    # every block of rows.
    return table.reshape(-1, 1) if table.shape[0] == 1 else table.t().contiguous()


def lut_linear(x2d: torch.Tensor, module: Any) -> torch.Tensor:
    """``x2d @ W^T`` by byte lookups (see the module docstring), for any number of rows, without the bias.

    Args:
        x2d: inputs ``(B, K)``, any float dtype (the table is built in fp32).
        module: a QuantLinear served by this kernel (``module.kernel == "vq_lut"``).

    Returns:
        fp32 ``(B, N)``.

    Example:
        >>> from torch import nn
        >>> import quanta
        >>> layer = quanta.quantize(nn.Sequential(nn.Linear(64, 16, bias=False)), "vq2x16")[0]
        >>> x = torch.randn(2, 64)
        >>> bool(torch.allclose(lut_linear(x, layer), x @ layer.dequantized_weight(torch.float32).t(), atol=1e-5))
        True
    """
    layout = _bytes(module.weight_scheme, module.weight_shape)
    assert layout is not None  # _applies checked it
    n_rows, row_bytes = int(module.weight_shape[0]), layout.row_bytes
    table = _lut_table(x2d, _books(module), layout)
    codes = module.weight_codes.view(n_rows, row_bytes)
    offsets = torch.arange(row_bytes, dtype=torch.int32) * 256  # (row_bytes,): byte p's table starts at 256 p
    block = max(1, CHUNK // row_bytes)
    columns = torch.empty(min(block, n_rows), row_bytes, dtype=torch.int32)
    ones = torch.ones(columns.numel())
    starts = torch.arange(0, (columns.shape[0] + 1) * row_bytes, row_bytes, dtype=torch.int32)
    out = torch.empty(n_rows, x2d.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "sparse CSR is in beta" notice
        for r in range(0, n_rows, block):
            n = min(block, n_rows - r)
            cols = (
                columns[:n].copy_(codes[r : r + n]).add_(offsets)
            )  # 256 p + byte, int32 (faster than a promoting add)
            sparse = torch.sparse_csr_tensor(
                starts[: n + 1], cols.view(-1), ones[: n * row_bytes], (n, row_bytes * 256), check_invariants=False
            )
            torch.mm(sparse, table, out=out[r : r + n])
    return out.t()


def dequantize_bytes(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """The weight by one gather from a table of what each code byte decodes to (the large-batch path).

    Args:
        module: a QuantLinear served by this kernel.
        dtype: the dtype of the result.

    Returns:
        ``(N, K)`` in ``dtype``, equal to ``module.dequantized_weight(dtype)`` exactly: the same fp32 sums of
        stage entries, cast once.
    """
    layout = _bytes(module.weight_scheme, module.weight_shape)
    assert layout is not None
    n_rows, k_in = (int(s) for s in module.weight_shape)
    books = _books(module)
    value, shift = torch.arange(256), layout.entries.bit_length() - 1
    # The stage entry each of a byte's u indices decodes to, per byte class: (classes, 256, u, d).
    table = torch.stack(
        [
            torch.stack(
                [
                    books[(q * layout.per_byte + i) % layout.stages][(value >> (shift * i)) & (layout.entries - 1)]
                    for i in range(layout.per_byte)
                ],
                dim=1,
            )
            for q in range(layout.classes)
        ]
    )
    split = layout.stages == 2 and layout.classes == 2  # a byte holds one stage of a vector: sum after the gather
    if layout.stages == 2 and not split:  # a byte holds whole vectors (stage 1, stage 2, ...): sum in the table
        table = table[:, :, 0::2] + table[:, :, 1::2]  # one fp32 rounding of c1 + c2, as the decoder's
    index = module.weight_codes.view(n_rows, layout.row_bytes).int()
    if split:  # odd bytes hold stage-2 indices: their table follows the stage-1 one
        index[:, 1::2] += 256
    values = F.embedding(index, table.flatten(2).flatten(0, 1))  # (N, row_bytes, values a byte decodes to)
    weight = values.view(n_rows, -1, 2, layout.dim).sum(2) if split else values
    return weight.reshape(n_rows, k_in).to(dtype)


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantLinear with a vq weight
    out_features, in_features = module.weight_shape
    flat = x.reshape(-1, in_features)
    if flat.shape[0] <= LUT_MAX_ROWS:
        y = lut_linear(flat, module)
        if module.bias is not None:
            y = y + module.bias.float()
        y = y.to(x.dtype)
    else:
        bias = None if module.bias is None else module.bias.to(x.dtype)
        y = F.linear(flat, dequantize_bytes(module, x.dtype), bias)
    return y.reshape(*x.shape[:-1], out_features)


VQ_LUT = register_kernel(Kernel("vq_lut", "linear", _applies, (torch.float32, torch.bfloat16), _run))
