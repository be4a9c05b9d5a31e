"""Bit-depth requantization of 8-bit images: each channel to ``N`` bits, plain, error-diffused or ordered-dithered.

An ``N``-bit channel has ``L = 2^N`` levels spread over the whole 0..255 range, ``v_k = round(255 k / (L - 1))``
(what bit replication gives: 3 bits -> 0, 36, 73, 109, 146, 182, 219, 255), a nominal step ``Δ = 255 / (L - 1)``
apart. Each pixel value goes to its nearest level, after one of three dithers:

- ``"none"``: nearest level. For integer inputs the error is at most ``Δ / 2``: neighbouring levels are
  ``floor(Δ)`` or ``ceil(Δ)`` apart, and for every N in 1..8 half the largest gap, rounded down, is ``<= Δ / 2``.
- ``"floyd-steinberg"``: error diffusion (:func:`quanta.image.error_diffusion`, the same code the palettes use)
  with the per-channel nearest level as the quantizer: local means are kept, banding turns into fine noise.
- ``"bayer"``: ordered dither: the pixel at ``(y, x)`` is offset by ``Δ ((B[y % 8, x % 8] + 1/2) / 64 - 1/2)``
  before rounding, with ``B`` the 8 x 8 Bayer index matrix (a permutation of 0..63): a flat area between two
  levels becomes a fixed pattern whose 8 x 8 mean is within ``Δ / 64`` of the input (plus the levels' rounding).
  No state carries between pixels, so it is fast and stable under edits, but the pattern is visible.

    >>> import numpy as np
    >>> ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    >>> np.unique(requantize_image(ramp, 2)).tolist()
    [0, 85, 170, 255]
    >>> bayer_matrix(2).tolist()
    [[0, 2], [3, 1]]
"""

from __future__ import annotations

import numpy as np

from quanta.errors import BitWidthError, InvalidTensorError, SchemeError
from quanta.image import error_diffusion

__all__ = ["BAYER_SIZE", "DITHERS", "bayer_matrix", "requantize_image", "requantize_levels"]

DITHERS = ("none", "floyd-steinberg", "bayer")
"""Dither names :func:`requantize_image` accepts."""

BAYER_SIZE = 8
"""Side of the Bayer matrix of the ordered dither: 64 thresholds, finer than any step of 1..8 bits needs."""


def requantize_levels(bits: int) -> np.ndarray:
    """The ``2^bits`` levels ``round(255 k / (2^bits - 1))`` of an ``bits``-bit channel, uint8, increasing.

    Raises:
        BitWidthError: ``bits`` outside 1..8.

    Example:
        >>> requantize_levels(3).tolist()
        [0, 36, 73, 109, 146, 182, 219, 255]
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise BitWidthError(f"bits per channel must be an integer in 1..8 (the input has 8), got {bits!r}.")
    n = 1 << int(bits)
    return np.floor(np.arange(n) * (255.0 / (n - 1)) + 0.5).astype(np.uint8)  # round half up, exact for k/(n-1)


def bayer_matrix(n: int = BAYER_SIZE) -> np.ndarray:
    """The ``n x n`` Bayer index matrix (``n`` a power of two), int64 values 0..n²-1.

    Built by the recursion ``B_2m = [[4 B_m, 4 B_m + 2], [4 B_m + 3, 4 B_m + 1]]`` from ``B_1 = [[0]]``, so that
    each threshold is as far as possible from the ones before it.

    Raises:
        SchemeError: ``n`` not a power of two >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n & (n - 1):
        raise SchemeError(f"the Bayer matrix side must be a power of two (1, 2, 4, 8, ...), got {n!r}.")
    b = np.zeros((1, 1), dtype=np.int64)
    while len(b) < n:
        b = np.block([[4 * b, 4 * b + 2], [4 * b + 3, 4 * b + 1]])
    return b


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidTensorError(
            f"image must be a uint8 numpy array of shape (H, W) or (H, W, C), got a {what}; "
            "convert it with np.asarray(PIL.Image.open(path).convert('RGB'))."
        )
    if image.size == 0:
        raise InvalidTensorError(f"image is empty (shape {image.shape}); pass an image with at least one pixel.")
    return image


def requantize_image(image: np.ndarray, bits: int, dither: str = "none") -> np.ndarray:
    """Reduce every channel of an 8-bit image to ``bits`` bits (``2^bits`` levels over 0..255).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8.
        bits: bits per channel, 1..8 (8 returns the image unchanged, whatever the dither).
        dither: ``"none"``, ``"floyd-steinberg"`` or ``"bayer"`` (see the module docstring).

    Returns:
        The requantized image, uint8, the shape of ``image``, every value one of :func:`requantize_levels`.

    Raises:
        InvalidTensorError: ``image`` not a non-empty 2-D or 3-D uint8 array.
        BitWidthError: ``bits`` outside 1..8.
        SchemeError: an unknown ``dither``.

    Example:
        >>> import numpy as np
        >>> flat = np.full((8, 8), 100, dtype=np.uint8)  # between the 2-bit levels 85 and 170
        >>> requantize_image(flat, 2).max(), round(float(requantize_image(flat, 2, "bayer").mean()), 2)
        (np.uint8(85), 99.61)
    """
    image = _check_image(image)
    levels = requantize_levels(bits).astype(np.float64)
    if dither not in DITHERS:
        raise SchemeError(f"unknown dither {dither!r}; choose one of {', '.join(DITHERS)}.")
    mids = (levels[1:] + levels[:-1]) / 2  # decision thresholds between neighbouring levels

    def nearest(v: np.ndarray) -> np.ndarray:
        return np.searchsorted(mids, v, side="right")  # ties (an even gap's midpoint) go up, like round-half-up

    work = image.astype(np.float64)
    if dither == "none":
        codes = nearest(work)
    elif dither == "bayer":
        h, w = image.shape[:2]
        t = (bayer_matrix(BAYER_SIZE) + 0.5) / BAYER_SIZE**2 - 0.5  # (8, 8) thresholds in (-1/2, 1/2) of a step
        offset = np.tile(t, (-(-h // BAYER_SIZE), -(-w // BAYER_SIZE)))[:h, :w]  # (H, W)
        if image.ndim == 3:
            offset = offset[:, :, None]  # the same pattern on every channel, as ordered dither usually does
        codes = nearest(work + offset * (levels[-1] / (len(levels) - 1)))
    else:
        chans = work if image.ndim == 3 else work[:, :, None]  # (H, W, C)

        def quantizer(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            k = nearest(v)  # (n, C)
            return k, levels[k]

        codes = error_diffusion(chans, quantizer, 0.0, 255.0).reshape(image.shape)
    return levels[codes].astype(np.uint8)
