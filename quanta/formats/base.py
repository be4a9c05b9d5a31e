"""The contract every value format implements, and the registry that finds formats by name.

A format turns groups of values into integer codes plus per-group parameters (scales, zero points,
codebooks) and back. It sees 3-D blocks ``(rows, n_groups, group_len)`` cut by
:class:`~quanta.primitives.groups.Grouping`, so granularity is handled once, outside every format.
Parameters are shaped ``(rows, n_groups, ...)``.

Formats are registered by family: a regular expression on the format name and a builder, so parametric names
(``int3``, ``q4.4``, ``pot5``, ``lloyd3``) need one entry. Adding a family is one new module in
``quanta/formats/``; the package imports every module in it, so nothing central changes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import torch

from quanta.errors import UnknownFormatError
from quanta.primitives.affine import storage_scale

if TYPE_CHECKING:
    from quanta.scheme import QScheme

__all__ = [
    "AbsmaxScaled",
    "Format",
    "FormatFamily",
    "Params",
    "families",
    "get_format",
    "int_storage_dtype",
    "register_family",
]

Params = dict[str, torch.Tensor]

SCALE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def int_storage_dtype(bits: int, signed: bool) -> torch.dtype:
    """Smallest torch integer dtype that holds every ``bits``-wide (un)signed value."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    if bits <= 16 and signed:
        return torch.int16
    return torch.int32


class Format(ABC):
    """A grid of representable values and the rules to encode onto it.

    Class attributes describe what a scheme may combine with the format; :class:`~quanta.scheme.QScheme`
    checks them, so a format never sees a setting it does not support.
    """

    name: str
    bits: int
    signed_codes: bool = False
    """Codes are signed integers (packed as two's complement); otherwise ``0 .. 2**bits - 1``."""
    modes: tuple[str, ...] = ("sym",)
    """Supported ways of placing the grid: ``sym``, ``asym`` (integer zero point), ``fmin`` (float offset)."""
    roundings: tuple[str, ...] = ("rne",)
    grouped: bool = True
    """False for grids with no fitted parameter (fixed point): only per-tensor makes sense."""
    narrowable: bool = False
    shareable: bool = False
    """Its fitted parameters (a codebook) may be shared by several tensors: the ``shared`` scheme option."""
    summary: str = ""

    @abstractmethod
    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Stored parameters: name -> (trailing shape after ``(rows, n_groups)``, storage dtype)."""

    @abstractmethod
    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        """Fit per-group parameters for fp32 blocks ``x`` of shape ``(rows, n, g)``.

        Returns stored parameters in their storage dtypes (see :meth:`param_spec`); names starting with ``_``
        are helpers for :meth:`encode` that are not stored.
        """

    @abstractmethod
    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Integer codes (int32, or a narrower integer dtype) for fp32 blocks ``x`` ``(rows, n, g)``."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        """fp32 values of integer codes ``(rows, n, g)`` given this block's stored parameters."""

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest and largest representable value of each group, shaped ``(rows, n, 1)``."""
        values = self.levels(params, scheme)
        return values.amin(-1, keepdim=True), values.amax(-1, keepdim=True)

    def check_params(self, params: Params, scheme: QScheme) -> str | None:
        """Say what is wrong with stored parameters read from outside (``None`` when they are valid).

        Shapes and dtypes are checked by the caller; formats check value ranges here.
        """
        return None

    def fused_fake_quantize(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor | None:
        """Optional fast path: differentiable ``decode(encode(x))`` with the straight-through gradient, or None.

        Formats that map onto one of torch's fused fake-quantize kernels return its result; the generic path
        (encode, decode, :meth:`inside` mask) must give identical values and gradients.
        """
        return None

    def inside(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        """Boolean mask of the values of ``x`` ``(rows, n, g)`` that encoding does not clip.

        The straight-through estimator passes gradients only there. By default: inside :meth:`clip_range`.
        """
        lo, hi = self.clip_range(params, scheme)
        return (x >= lo) & (x <= hi)

    def levels(self, params: Params, scheme: QScheme) -> torch.Tensor:
        """Every representable value of each group, ``(rows, n, 2**bits)`` (small formats only)."""
        rows, n = next(iter(params.values())).shape[:2] if params else (1, 1)
        codes = self.code_values(scheme).reshape(1, 1, -1).expand(rows, n, -1)
        return self.decode(codes, params, scheme)

    def code_values(self, scheme: QScheme) -> torch.Tensor:
        """Every valid code as an int32 vector."""
        if self.signed_codes:
            return torch.arange(-(1 << (self.bits - 1)), 1 << (self.bits - 1), dtype=torch.int32)
        return torch.arange(1 << self.bits, dtype=torch.int32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class AbsmaxScaled(Format):
    """A fixed grid within ``[-max_level, max_level]`` stretched by one scale per group: ``absmax / max_level``.

    The group's largest magnitude lands exactly on the grid's largest level (NF4, power-of-two, minifloats).
    """

    max_level: float = 1.0

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"scale": ((), SCALE_DTYPES[scheme.scale_dtype])}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        return {"scale": storage_scale(x.abs().amax(-1) / self.max_level, SCALE_DTYPES[scheme.scale_dtype])}

    def check_params(self, params: Params, scheme: QScheme) -> str | None:
        return None if bool((params["scale"] > 0).all()) else "scales must be positive"


@dataclass(frozen=True)
class FormatFamily:
    """A set of format names matched by ``pattern`` and built by ``build(match)``."""

    pattern: re.Pattern[str]
    build: Callable[[re.Match[str]], Format]
    examples: tuple[str, ...]
    summary: str


_FAMILIES: list[FormatFamily] = []


def register_family(
    pattern: str, examples: tuple[str, ...], summary: str
) -> Callable[[Callable[[re.Match[str]], Format]], Callable[[re.Match[str]], Format]]:
    """Decorator registering a builder for every format name that fully matches ``pattern``."""

    def decorator(build: Callable[[re.Match[str]], Format]) -> Callable[[re.Match[str]], Format]:
        _FAMILIES.append(FormatFamily(re.compile(pattern), build, examples, summary))
        get_format.cache_clear()
        return build

    return decorator


def families() -> list[FormatFamily]:
    """Every registered format family, in registration order."""
    _load_builtin_formats()
    return list(_FAMILIES)


@cache
def get_format(name: str) -> Format:
    """Return the format called ``name`` (e.g. ``"int4"``, ``"nf4"``, ``"q4.4"``).

    Raises:
        UnknownFormatError: if no family matches, listing the valid names.
        BitWidthError: if the family matches but the width is out of its range.
    """
    _load_builtin_formats()
    for family in _FAMILIES:
        match = family.pattern.fullmatch(name)
        if match:
            return family.build(match)
    valid = "; ".join(f"{', '.join(f.examples)} ({f.summary})" for f in _FAMILIES)
    raise UnknownFormatError(f"unknown format {name!r}. Valid formats: {valid}.")


def _load_builtin_formats() -> None:
    # Importing the package imports every module in it, and each module registers its families.
    import quanta.formats  # noqa: F401
