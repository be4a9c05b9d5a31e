"""Colour spaces for palette quantization: sRGB <-> linear RGB <-> CIELAB (D65) and OKLab.

Every function maps an array of colours ``(..., 3)`` to another of the same shape, in float64. sRGB values are
on the 0..255 scale (what a PNG stores); linear RGB on 0..1. The formulas:

- sRGB transfer (IEC 61966-2-1): ``c / 12.92`` below 0.04045, else ``((c + 0.055) / 1.055) ** 2.4``.
- CIELAB (CIE 15, ISO 11664-4): linear sRGB -> XYZ with the sRGB D65 matrix, then ``L* = 116 f(Y/Yn) - 16``,
  ``a* = 500 (f(X/Xn) - f(Y/Yn))``, ``b* = 200 (f(Y/Yn) - f(Z/Zn))`` with ``f(t) = t ** (1/3)`` above
  ``(6/29) ** 3``, else ``t / (3 (6/29) ** 2) + 4/29``; white point D65 ``(0.95047, 1, 1.08883)``.
- OKLab (Ottosson, 2020): linear sRGB -> LMS (matrix ``M1``), cube root, -> Lab (matrix ``M2``).

The inverses use ``numpy.linalg.inv`` of the same matrices, so a round trip is exact to float64 rounding.

    >>> import numpy as np
    >>> red = np.array([255.0, 0.0, 0.0])
    >>> np.round(srgb_to_lab(red), 2).tolist()
    [53.24, 80.09, 67.2]
    >>> np.round(srgb_to_oklab(red), 4).tolist()
    [0.628, 0.2249, 0.1258]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quanta.errors import SchemeError

__all__ = [
    "SPACES",
    "from_space",
    "lab_to_srgb",
    "linear_to_srgb",
    "oklab_to_srgb",
    "srgb_to_lab",
    "srgb_to_linear",
    "srgb_to_oklab",
    "to_space",
]

_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0

_M1 = np.array(  # linear sRGB -> LMS
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_M2 = np.array(  # cube-rooted LMS -> OKLab
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)
_M1_INV, _M2_INV = np.linalg.inv(_M1), np.linalg.inv(_M2)


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB on 0..255 -> linear RGB on 0..1 (the sRGB transfer function, inverted)."""
    c = np.asarray(srgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear RGB on 0..1 -> sRGB on 0..255 (unrounded, unclipped; negative inputs map through the linear part)."""
    c = np.asarray(linear, dtype=np.float64)
    encoded = 1.055 * np.maximum(c, 0.0031308) ** (1.0 / 2.4) - 0.055
    return 255.0 * np.where(c <= 0.0031308, 12.92 * c, encoded)


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA**3, np.cbrt(t), t / (3.0 * _DELTA**2) + 4.0 / 29.0)


def _f_inv(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA, t**3, 3.0 * _DELTA**2 * (t - 4.0 / 29.0))


def srgb_to_lab(srgb: np.ndarray) -> np.ndarray:
    """sRGB on 0..255 -> CIELAB ``(L*, a*, b*)`` under D65 (L* in 0..100)."""
    xyz = srgb_to_linear(srgb) @ _RGB_TO_XYZ.T
    fx, fy, fz = np.moveaxis(_f(xyz / _WHITE_D65), -1, 0)
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB on 0..255 (unrounded, unclipped: out-of-gamut colours fall outside 0..255)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    return linear_to_srgb((_f_inv(f) * _WHITE_D65) @ _XYZ_TO_RGB.T)


def srgb_to_oklab(srgb: np.ndarray) -> np.ndarray:
    """sRGB on 0..255 -> OKLab ``(L, a, b)`` (L in 0..1)."""
    return np.cbrt(srgb_to_linear(srgb) @ _M1.T) @ _M2.T


def oklab_to_srgb(oklab: np.ndarray) -> np.ndarray:
    """OKLab -> sRGB on 0..255 (unrounded, unclipped)."""
    lms = (np.asarray(oklab, dtype=np.float64) @ _M2_INV.T) ** 3
    return linear_to_srgb(lms @ _M1_INV.T)


SPACES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "rgb": (lambda x: np.asarray(x, dtype=np.float64), lambda x: np.asarray(x, dtype=np.float64)),
    "lab": (srgb_to_lab, lab_to_srgb),
    "oklab": (srgb_to_oklab, oklab_to_srgb),
}
"""Colour space name -> (from sRGB 0..255, back to sRGB 0..255). ``rgb`` is sRGB itself, the space PSNR uses."""


def _pair(space: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    if space not in SPACES:
        raise SchemeError(f"unknown colour space {space!r}; choose one of {', '.join(SPACES)}.")
    return SPACES[space]


def to_space(srgb: np.ndarray, space: str) -> np.ndarray:
    """sRGB colours on 0..255 ``(..., 3)`` -> the same colours in ``space`` (``rgb``, ``lab`` or ``oklab``).

    Raises:
        SchemeError: an unknown space name.
    """
    return _pair(space)[0](srgb)


def from_space(colors: np.ndarray, space: str) -> np.ndarray:
    """Colours in ``space`` ``(..., 3)`` -> sRGB on 0..255, unrounded and unclipped (the inverse of to_space)."""
    return _pair(space)[1](colors)
