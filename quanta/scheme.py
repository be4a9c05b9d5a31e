"""``QScheme``: how one tensor is quantized, and its short string form.

Grammar (tokens joined by ``:``; the format comes first, the rest may come in any order)::

    scheme      := format [":" granularity] {":" option}
    format      := int1..int16 | uint1..uint16 | qM.N | binary | ternary | pot2..pot8 | nf4
                 | fp8_e4m3 | fp8_e5m2 | fp6_e3m2 | fp6_e2m3 | fp4_e2m1 | lloyd1..lloyd8 | q4_k (g256 only)
    granularity := "tensor" (default) | "ch" (per output channel) | "gN" (groups of N along the reduction dim)
                 | "rowsN" (codebook formats: one codebook per N consecutive output rows)
    option      := "sym" (default) | "asym" (integer zero point) | "fmin" (float minimum offset)
                 | "full" (default) | "narrow"  (drop the most negative code: [-127, 127])
                 | "sf32" (default) | "sf16" | "sbf16"  (dtype of scales, offsets and codebooks)
                 | "rne" (default, round half to even) | "sr" (stochastic rounding)
                 | "obs=NAME" (observer for activations, e.g. obs=minmax)
                 | "shared" (codebook formats: one codebook fitted over every tensor of a recipe rule)

``str(scheme)`` prints the canonical form: defaults are left out, and the granularity is written whenever
any option follows it, so the format and granularity always stand in the first two places
(``uint8:tensor:asym``, ``int4:g128:asym``, ``int8:ch:sf16``, ``nf4:g64``). Channels and groups always run
along the reduction dimension: ``in_features`` of a Linear, ``in_channels * kh * kw`` of a Conv, the hidden
size of an Embedding, the rows of GPT-2's ``[in, out]`` Conv1D.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from quanta.errors import SchemeError, UnsupportedError
from quanta.formats.base import Format, get_format
from quanta.primitives.checks import check_group_size

__all__ = ["QScheme"]

Granularity = Literal["tensor", "channel", "group", "rows"]
Mode = Literal["sym", "asym", "fmin"]
ScaleDtype = Literal["fp32", "fp16", "bf16"]
Rounding = Literal["rne", "sr"]

_SCALE_TOKENS = {"sf32": "fp32", "sf16": "fp16", "sbf16": "bf16"}
_OBSERVER = re.compile(r"obs=([a-z][a-z0-9_.]*)")
_GROUP = re.compile(r"g(-?[0-9]{1,9})")
_ROWS = re.compile(r"rows(-?[0-9]{1,9})")

GRAMMAR_HELP = (
    "A scheme is FORMAT[:GRANULARITY][:OPTION...], e.g. int8, uint8:tensor:asym, int4:g128:asym, int8:ch:sf16, "
    "nf4:g64, fp8_e4m3, q4.4, lloyd3:g64. GRANULARITY is tensor | ch | gN | rowsN (N > 0; rowsN for codebooks). "
    "OPTIONs: sym | asym | fmin, full | narrow, sf32 | sf16 | sbf16, rne | sr, obs=NAME, shared. "
    "Run `quanta formats` to list the formats."
)


@dataclass(frozen=True)
class QScheme:
    """How one tensor is quantized: format, granularity, placement of the grid, scale dtype, rounding.

    Args:
        format: a registered format name (``int4``, ``nf4``, ``fp8_e4m3``, ``q4.4``, ...).
        granularity: ``tensor``, ``channel`` (one scale per output channel) or ``group``.
        group_size: columns per group along the reduction dimension; required for ``group`` only.
        mode: ``sym`` (zero point fixed), ``asym`` (integer zero point) or ``fmin`` (float minimum offset).
        narrow: use the narrow integer range (``[-127, 127]`` rather than ``[-128, 127]``).
        scale_dtype: storage dtype of scales, offsets and codebooks: ``fp32``, ``fp16`` or ``bf16``.
        rounding: ``rne`` (round half to even) or ``sr`` (stochastic).
        observer: name of the range observer used for activations (``None`` for weights).
        shared: the parameters (a codebook) are fitted once over all the tensors a recipe rule quantizes and
            stored once; ``quanta.quantize`` does the joint fit, a tensor quantized alone shares with itself.

    Raises:
        SchemeError: (or a subclass) when the combination is invalid for the format.

    Example:
        >>> s = QScheme.parse("int4:g128:asym")
        >>> s.bits, s.group_size, str(s)
        (4, 128, 'int4:g128:asym')
    """

    format: str = "int8"
    granularity: Granularity = "tensor"
    group_size: int | None = None
    mode: Mode = "sym"
    narrow: bool = False
    scale_dtype: ScaleDtype = "fp32"
    rounding: Rounding = "rne"
    observer: str | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.format, str):
            raise SchemeError(f"format must be a string such as 'int4', got {self.format!r}.")
        fmt = get_format(self.format.strip().lower())  # raises UnknownFormatError / BitWidthError
        object.__setattr__(self, "format", fmt.name)  # canonical spelling: "INT04" -> "int4"
        if self.granularity not in ("tensor", "channel", "group", "rows"):
            raise SchemeError(
                f"granularity {self.granularity!r} is invalid; use 'tensor', 'channel', 'group' or 'rows'."
            )
        if self.granularity in ("group", "rows"):
            if self.group_size is None:
                raise SchemeError(
                    f"granularity {self.granularity!r} needs a group_size, e.g. QScheme('int4', 'group', 128) or "
                    "QScheme('vq4x256', 'rows', 64)."
                )
            object.__setattr__(self, "group_size", check_group_size(self.group_size))  # numpy ints -> int
        elif self.group_size is not None:
            raise SchemeError(
                f"group_size={self.group_size} only goes with granularity 'group' or 'rows', not {self.granularity!r}."
            )
        if self.granularity == "rows" and not fmt.shareable:
            raise UnsupportedError(
                f"{self.format} fits no codebook, so it has no rows granularity (one codebook per group of output "
                "rows); use it with a codebook format, e.g. vq4x256:rows64, or use gN / ch."
            )
        if not fmt.grouped and self.granularity != "tensor":
            raise UnsupportedError(
                f"{self.format} has no fitted scale, so it is per-tensor only; "
                f"drop the {self._granularity_token()!r} part."
            )
        if self.mode not in ("sym", "asym", "fmin"):
            raise SchemeError(f"mode {self.mode!r} is invalid; use 'sym', 'asym' or 'fmin'.")
        if self.mode not in fmt.modes:
            raise UnsupportedError(
                f"{self.format} does not support mode {self.mode!r}; it supports {', '.join(fmt.modes)}."
            )
        if not isinstance(self.narrow, bool):
            raise SchemeError(f"narrow must be True or False, got {self.narrow!r}.")
        if self.narrow and not fmt.narrowable:
            raise UnsupportedError(f"{self.format} has no narrow range; narrow applies to int/uint formats.")
        if self.scale_dtype not in _SCALE_TOKENS.values():
            raise SchemeError(f"scale_dtype {self.scale_dtype!r} is invalid; use 'fp32', 'fp16' or 'bf16'.")
        if self.rounding not in ("rne", "sr"):
            raise SchemeError(f"rounding {self.rounding!r} is invalid; use 'rne' or 'sr'.")
        if self.rounding not in fmt.roundings:
            raise UnsupportedError(
                f"{self.format} does not support rounding {self.rounding!r}; it supports {', '.join(fmt.roundings)}."
            )
        if self.observer is not None and not _OBSERVER.fullmatch(f"obs={self.observer}"):
            raise SchemeError(f"observer name {self.observer!r} is invalid; use lowercase letters, digits, '_' or '.'.")
        if self.shared and not (fmt.shareable and self.granularity == "tensor"):
            raise UnsupportedError(
                f"{self.format}:{self._granularity_token()} cannot share its parameters across tensors; 'shared' "
                "applies to per-tensor codebook formats (e.g. vq4x256:tensor:sf16:shared)."
            )
        if self.narrow:
            fmt.code_values(self)  # raises BitWidthError where a narrow range leaves a single level

    @property
    def fmt(self) -> Format:
        """The registered :class:`~quanta.formats.base.Format` object."""
        return get_format(self.format)

    @property
    def bits(self) -> int:
        """Bits per code."""
        return self.fmt.bits

    @property
    def is_integer(self) -> bool:
        """Whether the format is a plain integer grid (``intB`` / ``uintB``): scale and zero point per group."""
        return self.format.lstrip("u").startswith("int")

    @classmethod
    def parse(cls, text: str | QScheme) -> QScheme:
        """Parse the string form (see the module docstring); a ``QScheme`` is returned unchanged.

        Raises:
            SchemeError: naming the token it cannot read and listing the valid forms.
        """
        if isinstance(text, QScheme):
            return text
        if not isinstance(text, str) or not text.strip():
            raise SchemeError(f"cannot parse scheme {text!r}. {GRAMMAR_HELP}")
        fmt, *tokens = text.strip().lower().split(":")
        fields: dict[str, object] = {"format": fmt}
        seen: dict[str, str] = {}

        def put(kind: str, token: str, **values: object) -> None:
            if kind in seen:
                raise SchemeError(
                    f"scheme {text!r} sets the {kind} twice ({seen[kind]!r} and {token!r}). {GRAMMAR_HELP}"
                )
            seen[kind] = token
            fields.update(values)

        for token in tokens:
            group = _GROUP.fullmatch(token)
            observer = _OBSERVER.fullmatch(token)
            if token == "tensor":
                put("granularity", token, granularity="tensor")
            elif token in ("ch", "channel"):
                put("granularity", token, granularity="channel")
            elif group:
                put("granularity", token, granularity="group", group_size=check_group_size(int(group.group(1))))
            elif rows := _ROWS.fullmatch(token):
                put("granularity", token, granularity="rows", group_size=check_group_size(int(rows.group(1))))
            elif token in ("sym", "asym", "fmin"):
                put("mode", token, mode=token)
            elif token in ("narrow", "full"):
                put("range", token, narrow=token == "narrow")
            elif token in _SCALE_TOKENS:
                put("scale dtype", token, scale_dtype=_SCALE_TOKENS[token])
            elif token in ("rne", "sr"):
                put("rounding", token, rounding=token)
            elif observer:
                put("observer", token, observer=observer.group(1))
            elif token == "shared":
                put("sharing", token, shared=True)
            else:
                raise SchemeError(f"cannot parse {token!r} in scheme {text!r}. {GRAMMAR_HELP}")
        return cls(**fields)  # type: ignore[arg-type]

    def _granularity_token(self) -> str:
        tokens = {"tensor": "tensor", "channel": "ch", "group": f"g{self.group_size}", "rows": f"rows{self.group_size}"}
        return tokens[self.granularity]

    def __str__(self) -> str:
        options: list[str] = []
        if self.mode != "sym":
            options.append(self.mode)
        if self.narrow:
            options.append("narrow")
        if self.scale_dtype != "fp32":
            options.append({v: k for k, v in _SCALE_TOKENS.items()}[self.scale_dtype])
        if self.rounding != "rne":
            options.append(self.rounding)
        if self.observer is not None:
            options.append(f"obs={self.observer}")
        if self.shared:
            options.append("shared")
        granularity = self._granularity_token()
        if granularity == "tensor" and not options:
            return self.format
        return ":".join([self.format, granularity, *options])

    def replace(self, **changes: object) -> QScheme:
        """A copy with some fields changed (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]
