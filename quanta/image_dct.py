"""Rate vs PSNR of quanta's DCT codec against Pillow's JPEG at the same qualities, and its plot.

:func:`rate_points` codes one image with :func:`quanta.signal.dct_codec.dct_encode` and with Pillow's JPEG
encoder (libjpeg, the same Annex K tables and IJG scaling) at each quality, and reports PSNR and rate: quanta's
zlib bytes and ideal zeroth-order entropy; Pillow's whole file and its entropy-coded scan alone (the file less
its headers: JFIF, quantization and Huffman tables, about 600 bytes, a large share of a small image).

    >>> import numpy as np
    >>> y, x = np.mgrid[0:32, 0:32]
    >>> img = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)
    >>> p = rate_points(img, [50])[0]
    >>> p.quality, abs(p.psnr_db - p.pillow_psnr_db) < 0.5
    (50, True)
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quanta.errors import CorruptDataError
from quanta.image import _pil, psnr
from quanta.signal.dct_codec import dct_decode, dct_encode, entropy_bits, quality_scale, to_bytes

__all__ = ["RatePoint", "jpeg_scan_bytes", "pillow_jpeg", "plot_rate_psnr", "rate_points"]

_PILLOW_SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}


@dataclass(frozen=True)
class RatePoint:
    """One image at one quality: quanta's codec and Pillow's JPEG side by side (rates in bytes; bpp = 8 B / pixels).

    Attributes:
        quality: 1..100.
        subsampling: ``"4:4:4"`` or ``"4:2:0"``.
        pixels: ``H * W``.
        psnr_db: quanta's decoded image vs the input.
        zlib_bytes: ``len(to_bytes(...))``, the zlib-compressed coefficients with a 9-byte header.
        entropy_bits: ideal zeroth-order code length of the coefficients.
        pillow_psnr_db: Pillow's decoded JPEG vs the input.
        pillow_bytes: the JPEG file.
        pillow_scan_bytes: its entropy-coded data alone.
    """

    quality: int
    subsampling: str
    pixels: int
    psnr_db: float
    zlib_bytes: int
    entropy_bits: float
    pillow_psnr_db: float
    pillow_bytes: int
    pillow_scan_bytes: int


def jpeg_scan_bytes(data: bytes) -> int:
    """Bytes of a baseline JPEG's entropy-coded data: from after the SOS header to before EOI.

    Raises:
        CorruptDataError: no SOI marker, or no SOS segment found.
    """
    if data[:2] != b"\xff\xd8":
        raise CorruptDataError("not a JPEG stream (no SOI marker); pass the bytes of a .jpg file.")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")  # length counts itself
        if marker == 0xDA:  # SOS: the scan runs to the EOI marker at the end of a single-scan file
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
            return end - (i + 2 + length)
        i += 2 + length
    raise CorruptDataError("JPEG stream without a start-of-scan (SOS) segment.")


def pillow_jpeg(image: np.ndarray, quality: int, subsampling: str = "4:4:4") -> tuple[np.ndarray, bytes]:
    """Encode ``image`` with Pillow's JPEG at ``quality`` (baseline, no Huffman optimisation) and decode it.

    Returns:
        ``(decoded uint8 image of the same shape, the JPEG file's bytes)``.

    Raises:
        SchemeError: ``quality`` outside 1..100.
    """
    quality_scale(quality)
    image_mod = _pil()
    buf = io.BytesIO()
    kwargs = {"subsampling": _PILLOW_SUBSAMPLING[subsampling]} if image.ndim == 3 else {}
    image_mod.fromarray(image).save(buf, format="JPEG", quality=int(quality), **kwargs)
    data = buf.getvalue()
    with image_mod.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB" if image.ndim == 3 else "L"), dtype=np.uint8)
    return decoded, data


def rate_points(image: np.ndarray, qualities: Sequence[int], subsampling: str = "4:4:4") -> list[RatePoint]:
    """quanta's DCT codec and Pillow's JPEG on ``image`` at each quality (see :class:`RatePoint`).

    Raises:
        InvalidTensorError: not an ``(H, W, 3)`` or ``(H, W)`` uint8 image.
        SchemeError: a quality outside 1..100 or an unknown subsampling.
    """
    points = []
    for q in qualities:
        enc = dct_encode(image, q, subsampling)
        decoded, data = pillow_jpeg(image, q, subsampling)
        points.append(
            RatePoint(
                quality=int(q),
                subsampling=subsampling,
                pixels=enc.pixels,
                psnr_db=psnr(image, dct_decode(enc)),
                zlib_bytes=len(to_bytes(enc)),
                entropy_bits=entropy_bits(enc),
                pillow_psnr_db=psnr(image, decoded),
                pillow_bytes=len(data),
                pillow_scan_bytes=jpeg_scan_bytes(data),
            )
        )
    return points


def plot_rate_psnr(
    path: str | os.PathLike[str], panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]
) -> str:
    """Write a PNG of PSNR (dB) against bits per pixel: one panel per ``title: {label: (bpp, psnr)}``, atomically.

    Needs matplotlib (the ``demo`` extra). Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quanta.io import atomic_path

    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False, sharey=True)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for (label, (bpp, db)), style in zip(curves.items(), ("o-", "s--", "^-", "v:", "d-", "x--"), strict=False):
            ax.plot(bpp, db, style, label=label)
        ax.set(title=title, xlabel="rate (bits per pixel)", ylabel="PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return os.fspath(path)
