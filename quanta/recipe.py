"""Recipes: ordered rules that say how each module of a model is quantized, presets, and a versioned JSON form.

A rule matches a module by a glob on its qualified name and/or its type name; the first matching rule wins.
Presets follow one grammar, parsed rather than listed::

    w{W}a{A}[-dyn][-g{N}][-{method}][+kv{8|4}]

``W`` weight bits (per output channel, or groups of ``N`` with ``-gN``), ``A`` activation bits (16: weights
only; otherwise static per-tensor, or dynamic per-token with ``-dyn``), ``method`` the PTQ algorithm (``rtn``
by default). Vector-codebook weights follow ``vq{d}x{k}[r2][s][-{method}]`` (``vq4x256``: 4-value vectors, a
256-entry per-layer codebook with fp16 entries, 2 bits a weight plus the codebook; ``s``: one codebook shared by
every quantized layer; ``-rowsN``: one codebook per N output rows; ``-iw`` fits it input-weighted on calibration
data, ``-gptvq`` adds GPTQ's error feedback).
Named specials: ``nf4-g64``, ``fp8``, ``ternary``, ``binary``, ``bnn``, ``q4.4``. Every preset
keeps embeddings and a module named ``lm_head`` in float; ``ternary``, ``binary`` and ``bnn`` also keep the first
and last quantizable layers in float, as the binary/ternary network literature does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from quanta.errors import CorruptDataError, QuantaError, SchemeError
from quanta.scheme import QScheme

__all__ = ["PRESET_GRAMMAR", "SPECIAL_PRESETS", "VQ_PRESET_GRAMMAR", "Recipe", "Rule", "preset", "resolve_recipe"]

RECIPE_VERSION = 1
PRESET_GRAMMAR = "w{W}a{A}[-dyn][-g{N}][-{method}][+kv{8|4}]"
VQ_PRESET_GRAMMAR = "vq{d}x{k}[r2][s][-rows{N}][-{method}]"
_VQ_PRESET = re.compile(r"(vq[0-9]x[0-9]{1,5}(?:r[0-9])?)(s?)(?:-rows([0-9]{1,6}))?(?:-([a-z][a-z0-9_]*))?")
_PRESET = re.compile(r"w([0-9]{1,2})a([0-9]{1,2})(-dyn)?(?:-g([0-9]{1,5}))?(?:-([a-z][a-z0-9_]*))?(?:\+kv(8|4))?")


@dataclass(frozen=True)
class Rule:
    """One recipe rule: which modules it matches and what happens to them.

    Args:
        pattern: glob on the qualified module name (``"*"``: every module; ``"features.0"``; ``"*.attn.*"``).
        module_type: class name the module must have (``"Linear"``, ``"Conv2d"``), or ``None`` for any.
        weight: weight scheme (``None`` with ``skip=False`` leaves weights alone).
        activation: activation scheme, or ``None`` for weights only.
        dynamic: activations are quantized per token at run time instead of with a calibrated static range.
        method: post-training method for the weights (``rtn``).
        skip: keep matching modules in float.
    """

    pattern: str = "*"
    module_type: str | None = None
    weight: QScheme | None = None
    activation: QScheme | None = None
    dynamic: bool = False
    method: str = "rtn"
    skip: bool = False

    def matches(self, name: str, module: nn.Module) -> bool:
        if self.module_type is not None and type(module).__name__ != self.module_type:
            return False
        return fnmatch.fnmatchcase(name, self.pattern)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "module_type": self.module_type,
            "weight": None if self.weight is None else str(self.weight),
            "activation": None if self.activation is None else str(self.activation),
            "dynamic": self.dynamic,
            "method": self.method,
            "skip": self.skip,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        known = {"pattern", "module_type", "weight", "activation", "dynamic", "method", "skip"}
        unknown = set(data) - known
        if unknown:
            raise SchemeError(f"recipe rule has unknown fields {sorted(unknown)}; valid fields: {sorted(known)}.")
        weight, activation = data.get("weight"), data.get("activation")
        return cls(
            pattern=str(data.get("pattern", "*")),
            module_type=data.get("module_type"),
            weight=None if weight is None else QScheme.parse(weight),
            activation=None if activation is None else QScheme.parse(activation),
            dynamic=bool(data.get("dynamic", False)),
            method=str(data.get("method", "rtn")),
            skip=bool(data.get("skip", False)),
        )


@dataclass(frozen=True)
class Recipe:
    """Ordered rules (first match wins) plus model-level options.

    Args:
        rules: the rules, most specific first.
        name: a label (the preset name for presets).
        keep_first_last: keep the first and last quantizable modules (in ``named_modules`` order) in float.
        kv_bits: KV-cache bits for language models (8 or 4), ``None`` for none.
    """

    rules: tuple[Rule, ...] = field(default_factory=tuple)
    name: str = "custom"
    keep_first_last: bool = False
    kv_bits: int | None = None

    def rule_for(self, name: str, module: nn.Module) -> Rule | None:
        """The first rule that matches, or ``None``."""
        return next((r for r in self.rules if r.matches(name, module)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe_version": RECIPE_VERSION,
            "name": self.name,
            "keep_first_last": self.keep_first_last,
            "kv_bits": self.kv_bits,
            "rules": [r.to_dict() for r in self.rules],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        version = data.get("recipe_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CorruptDataError(f"recipe has no valid recipe_version (got {version!r}).")
        if version > RECIPE_VERSION:
            raise CorruptDataError(f"recipe version {version} is newer than this quanta reads ({RECIPE_VERSION}).")
        rules = data.get("rules")
        if not isinstance(rules, list):
            raise CorruptDataError("recipe 'rules' must be a list of rule objects.")
        return cls(
            rules=tuple(Rule.from_dict(r) for r in rules),
            name=str(data.get("name", "custom")),
            keep_first_last=bool(data.get("keep_first_last", False)),
            kv_bits=data.get("kv_bits"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptDataError(f"recipe is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptDataError("recipe JSON must be an object with 'recipe_version' and 'rules'.")
        if "recipe_version" not in data and isinstance(data.get("recipe"), dict):
            data = data["recipe"]  # a quanta.json (quanta.save): the recipe that made that model
        return cls.from_dict(data)


def _float_keepers() -> tuple[Rule, ...]:
    # What every preset keeps in float: embeddings and a language model's output head.
    return (Rule(module_type="Embedding", skip=True), Rule(pattern="*lm_head", skip=True))


def _weights(bits: int, group: int | None) -> QScheme:
    """The weight scheme of ``w{bits}a..[-g{group}]``: per channel, or asymmetric groups with 16-bit scales.

    Groups of 128 or more store **bf16** scales, smaller groups fp16: with bf16 scales the int4 kernel holds torch's
    bf16 scale-and-zero table as the only copy of the parameters (fp16 scales do not survive a cast to bf16, so it
    would rebuild the table on every call, about a third of a batch-1 matmul). The codes are computed with the
    stored scale, rounded up, so every weight stays within half a step; bf16 (8 significant bits) only widens the
    step, by at most 2**-7 (0.8%; fp16: 2**-10), a negligible rise in quantization noise. Smaller groups keep fp16's
    finer scales: there the table's 4 bytes a group would break the 2% memory budget anyway.
    """
    if group is not None:
        return QScheme(f"int{bits}", "group", group, mode="asym", scale_dtype="bf16" if group >= 128 else "fp16")
    if bits >= 8:
        return QScheme(f"int{bits}", "channel")
    return QScheme(f"int{bits}", "channel", mode="asym")


SPECIAL_PRESETS: dict[str, tuple[str, str]] = {
    "nf4-g64": ("nf4:g64:sf16", "NF4 weights in groups of 64, fp16 scales; activations in float"),
    "fp8": ("fp8_e4m3:ch", "FP8 e4m3 weights per channel and FP8 e4m3 activations per tensor"),
    "ternary": ("ternary:ch", "ternary weights {-a, 0, +a} per channel; first and last layers in float"),
    "binary": ("binary:ch", "binary weights ±mean|w| per channel; first and last layers in float"),
    "bnn": (
        "binary:ch",
        "binary weights and binary activations (two fitted levels, binary:fmin); first and last layers in float",
    ),
    "q4.4": ("q4.4", "fixed-point Q4.4 weights and activations"),
    "vq4x256": ("vq4x256:tensor:sf16", "4-value vectors, 256-entry k-means codebook per layer: 2 bits a weight"),
    "vq2x16": ("vq2x16:tensor:sf16", "2-value vectors, 16-entry k-means codebook per layer: 2 bits a weight"),
    "vq2x64": ("vq2x64:tensor:sf16", "2-value vectors, 64-entry k-means codebook per layer: 3 bits a weight"),
    "vq4x16r2": ("vq4x16r2:tensor:sf16", "4-value vectors, two residual 16-entry codebooks: 2 bits a weight"),
    "q4_k": ("q4_k:g256:sf16", "llama.cpp Q4_K weights (4.5 bits a weight; exported to GGUF Q4_K losslessly)"),
}


def preset(name: str) -> Recipe:
    """Build the recipe a preset name describes (see the module docstring for the grammar).

    Raises:
        SchemeError: listing the grammar and the named specials when the name is not a preset.

    Example:
        >>> str(preset("w4a16-g128").rules[-1].weight)
        'int4:g128:asym:sbf16'
    """
    text = name.strip().lower()
    keepers = _float_keepers()
    if text in SPECIAL_PRESETS:
        scheme = QScheme.parse(SPECIAL_PRESETS[text][0])
        activation = {"fp8": "fp8_e4m3", "bnn": "binary:tensor:fmin", "q4.4": "q4.4"}.get(text)
        main = Rule(weight=scheme, activation=None if activation is None else QScheme.parse(activation))
        binaryish = text in ("ternary", "binary", "bnn")
        return Recipe(rules=(*keepers, main), name=text, keep_first_last=binaryish)
    vq = _VQ_PRESET.fullmatch(text)
    if vq:
        # Weights only, one codebook per layer (per-tensor granularity) with fp16 entries; with "s" one codebook
        # for all the layers of the rule (fitted jointly by quantize).
        rows = {} if vq.group(3) is None else {"granularity": "rows", "group_size": int(vq.group(3))}
        scheme = QScheme(vq.group(1), scale_dtype="fp16", shared=bool(vq.group(2)), **rows)  # type: ignore[arg-type]
        return Recipe(rules=(*keepers, Rule(weight=scheme, method=vq.group(4) or "rtn")), name=text)
    match = _PRESET.fullmatch(text)
    if not match:
        raise SchemeError(
            f"unknown preset {name!r}. Presets follow {PRESET_GRAMMAR} (e.g. w8a16, w8a8, w8a8-dyn, w4a16-g128, "
            f"w3a16-g16), {VQ_PRESET_GRAMMAR} (e.g. vq4x256, vq2x64-iw, vq4x256s-gptvq) "
            f"or are one of: {', '.join(SPECIAL_PRESETS)}. Run `quanta recipes` for details."
        )
    w_bits, a_bits, dyn, group, method, kv = match.groups()
    if method is not None and re.fullmatch(r"g[0-9]*[a-z0-9_]*", method) and not re.fullmatch(r"g[a-z]\w*", method):
        raise SchemeError(f"preset {name!r}: the group size must be a positive number, as in -g32 or -g128.")
    w, a = int(w_bits), int(a_bits)
    if not 1 <= w <= 16 or not 1 <= a <= 16:
        raise SchemeError(f"preset {name!r}: weight and activation bits must be 1..16 (16 means float).")
    if dyn and a == 16:
        raise SchemeError(f"preset {name!r}: '-dyn' quantizes activations, so it needs A < 16 (e.g. w8a8-dyn).")
    weight = None if w == 16 else _weights(w, None if group is None else int(group))
    act = None if a == 16 else QScheme(f"int{a}", "tensor", mode="sym" if dyn else "asym")
    main = Rule(weight=weight, activation=act, dynamic=bool(dyn), method=method or "rtn")
    return Recipe(rules=(*keepers, main), name=text, kv_bits=None if kv is None else int(kv))


def resolve_recipe(recipe: Recipe | str | os.PathLike[str]) -> Recipe:
    """A Recipe as given, a preset name, or a path to a recipe JSON file (or to a quanta.json, for its recipe)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, os.PathLike) or (isinstance(recipe, str) and recipe.endswith(".json")):
        path = Path(recipe)
        if not path.is_file():
            raise QuantaError(f"recipe file {path} does not exist.")
        return Recipe.from_json(path.read_text())
    if isinstance(recipe, str):
        return preset(recipe)
    raise SchemeError(f"recipe must be a Recipe, a preset name or a JSON path, got {type(recipe).__name__}.")


def with_rules(recipe: Recipe, *rules: Rule) -> Recipe:
    """A copy of ``recipe`` with ``rules`` tried before its own."""
    return replace(recipe, rules=(*rules, *recipe.rules))
