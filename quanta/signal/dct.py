"""The 8 x 8 block DCT of image codecs: orthonormal DCT-II matrix, blockwise transform and inverse, zigzag order.

The orthonormal DCT-II of ``n`` samples is ``X_k = a_k sum_i x_i cos(π (2 i + 1) k / (2 n))`` with
``a_0 = sqrt(1 / n)``, ``a_k = sqrt(2 / n)``: a matrix ``C`` with ``C C^T = I``, so a block ``B`` (n, n) has the
2-D transform ``C B C^T`` and the inverse ``C^T X C`` (scipy's ``dctn(B, norm="ortho")`` and ``idctn``). JPEG uses
it on 8 x 8 blocks; its DC coefficient is ``8 x`` the block mean. The zigzag order lists a block's coefficients by
rising frequency ``i + j``, alternating direction along each anti-diagonal, so the zeros of a quantized block end
up in one run at the end.

    >>> import numpy as np
    >>> c = dct_matrix(8)
    >>> bool(np.allclose(c @ c.T, np.eye(8)))
    True
    >>> ZIGZAG[:6].tolist()  # natural (row-major) indices: (0,0) (0,1) (1,0) (2,0) (1,1) (0,2)
    [0, 1, 8, 16, 9, 2]
"""

from __future__ import annotations

import numpy as np

from quanta.errors import InvalidTensorError, SchemeError

__all__ = ["BLOCK", "ZIGZAG", "block_dct", "block_idct", "dct_matrix", "zigzag_order"]

BLOCK = 8
"""Side of the transform blocks of JPEG (and of :func:`block_dct`)."""


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (n, n) float64: ``C[k, i] = a_k cos(π (2 i + 1) k / (2 n))``.

    Raises:
        SchemeError: ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SchemeError(f"the DCT size must be a positive integer, got {n!r}.")
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)  # a_0 = sqrt(1 / n)
    return c


def zigzag_order(n: int = BLOCK) -> np.ndarray:
    """Row-major indices ``(n * n,)`` of an ``n x n`` block in zigzag order (JPEG's for ``n = 8``).

    Anti-diagonal ``s = i + j`` in turn; odd ``s`` runs down the rows (row rising), even ``s`` up them.
    """
    cells = [(i, j) for i in range(n) for j in range(n)]
    cells.sort(key=lambda ij: (ij[0] + ij[1], ij[0] if (ij[0] + ij[1]) % 2 else -ij[0]))
    return np.array([i * n + j for i, j in cells], dtype=np.int64)


ZIGZAG = zigzag_order(BLOCK)
"""JPEG's zigzag scan of an 8 x 8 block: ``block.reshape(64)[ZIGZAG]`` lists it by rising frequency."""

_C = dct_matrix(BLOCK)


def _blocks(x: np.ndarray) -> np.ndarray:
    if x.ndim < 2 or x.shape[-1] % BLOCK or x.shape[-2] % BLOCK or x.size == 0:
        raise InvalidTensorError(
            f"block_dct needs an array (..., H, W) with H and W positive multiples of {BLOCK}, got shape "
            f"{x.shape}; pad the image (e.g. np.pad(x, ..., mode='edge')) first."
        )
    h, w = x.shape[-2:]
    # (..., H, W) -> (..., H/8, 8, W/8, 8) -> (..., H/8, W/8, 8, 8): one 8 x 8 block per (row, column) of blocks
    return x.reshape(*x.shape[:-2], h // BLOCK, BLOCK, w // BLOCK, BLOCK).swapaxes(-3, -2)


def block_dct(x: np.ndarray) -> np.ndarray:
    """The 2-D orthonormal DCT-II of every 8 x 8 block of ``x`` (..., H, W): coefficients (..., H/8, W/8, 8, 8).

    Raises:
        InvalidTensorError: H or W not a positive multiple of 8.

    Example:
        >>> import numpy as np
        >>> flat = np.full((8, 16), 3.0)
        >>> np.round(block_dct(flat)[..., 0, 0], 6).tolist()  # DC = 8 x the block mean; no AC energy
        [[24.0, 24.0]]
    """
    b = _blocks(np.asarray(x, dtype=np.float64))
    return _C @ b @ _C.T


def block_idct(coefficients: np.ndarray) -> np.ndarray:
    """The inverse of :func:`block_dct`: blocks (..., H/8, W/8, 8, 8) -> the image (..., H, W) float64.

    Raises:
        InvalidTensorError: the last two axes are not 8 x 8.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim < 4 or c.shape[-2:] != (BLOCK, BLOCK):
        raise InvalidTensorError(f"block_idct needs blocks of shape (..., H/8, W/8, 8, 8), got shape {c.shape}.")
    x = _C.T @ c @ _C  # (..., H/8, W/8, 8, 8)
    bh, bw = c.shape[-4:-2]
    return x.swapaxes(-3, -2).reshape(*c.shape[:-4], bh * BLOCK, bw * BLOCK)
