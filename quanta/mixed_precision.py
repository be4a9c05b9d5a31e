"""Mixed precision under a size budget: one candidate recipe per layer, chosen from measured sensitivities.

:func:`allocate` reads a :class:`~quanta.eval.sensitivity_result.Sensitivity` (per layer and candidate: the
measured ``effect``, larger = worse, and the layer's bytes) and picks for every measured layer the candidate that
minimises the **sum of the effects** within a budget: whole-model bytes as :func:`quanta.model_nbytes` counts them
(``budget_bytes``; layers no candidate quantizes count at their float bytes), or bits per weight
(``target_bpw``: 8 x the packed weights' bytes, codes + scales + zeros + codebooks, over the number of quantized
weights). Summing assumes the layers' effects add up, which is only approximately true; the benchmark
(``benchmarks/bench_mixed_precision.py``) measures how well the predicted sum matches the quantized model.

The choice is a multiple-choice knapsack, solved **exactly** by dynamic programming over bytes: costs are counted
in units of the greatest common divisor of every layer's extra bytes over its cheapest candidate, so the DP table
is small for real layer sizes (scales and codes make sizes multiples of a few bytes). Only when the table would
exceed ``max_cells`` are costs rounded *up* to coarser buckets (the result then still fits the budget but may miss
the optimum by a bucket per layer; ``Allocation.exact`` says which). A Lagrangian (convex-hull) method is cheaper
but can only reach allocations on the lower convex hull of each layer's (bytes, effect) points and leaves part of
the budget unused at tight budgets; with a few candidates and tens to hundreds of layers the exact DP costs well
under a second, so there is no reason to accept that gap.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from quanta.errors import BudgetError, QuantaError
from quanta.eval.sensitivity import _exact
from quanta.eval.sensitivity_result import LayerSensitivity, Sensitivity
from quanta.recipe import Recipe, Rule, resolve_recipe

__all__ = ["Allocation", "LayerChoice", "allocate"]

MAX_CELLS = 2**25  # DP table entries (int8 choices, one row per layer) before costs are bucketed more coarsely


@dataclass(frozen=True)
class LayerChoice:
    """The candidate chosen for one layer, with what the sensitivity measured for it."""

    layer: str
    candidate: str
    rule: Rule
    effect: float
    nbytes: int
    float_nbytes: int
    weight_nbytes: int | None
    weight_numel: int | None


@dataclass(frozen=True)
class Allocation:
    """One candidate per layer; ``nbytes`` / ``bits_per_weight`` are the model's as the sensitivity predicts them.

    ``exact``: the knapsack was solved exactly (False: costs were rounded up to coarser buckets).
    """

    choices: tuple[LayerChoice, ...]
    metric: str
    float_nbytes: int
    budget_bytes: int | None
    target_bpw: float | None
    exact: bool

    @property
    def nbytes(self) -> int:
        """``quanta.model_nbytes`` of the model quantized with this allocation (the rest of the model float)."""
        return self.float_nbytes + sum(c.nbytes - c.float_nbytes for c in self.choices)

    @property
    def predicted_effect(self) -> float:
        """The sum of the chosen layers' measured effects (the additive prediction of the model's effect)."""
        return math.fsum(c.effect for c in self.choices)

    @property
    def bits_per_weight(self) -> float | None:
        """8 x the packed weights' bytes / the quantized weights; ``None`` for a sensitivity without them."""
        return _bpw(self.choices)

    def counts(self) -> dict[str, int]:
        """How many layers each candidate got."""
        counts: dict[str, int] = {}
        for c in self.choices:
            counts[c.candidate] = counts.get(c.candidate, 0) + 1
        return counts

    def recipe(self, name: str | None = None) -> Recipe:
        """A recipe with one exact-name rule per layer (its candidate's rule); layers not listed stay float.

        No catch-all rule, so embeddings, ``lm_head`` and every layer the sensitivity did not measure stay float,
        and every rule matches a module (the recipe passes ``quanta.quantize``'s rule check as a JSON file).
        """
        rules = tuple(replace(c.rule, pattern=_exact(c.layer), module_type=None) for c in self.choices)
        bpw = self.bits_per_weight
        label = name or (f"mixed-{bpw:.2f}bpw" if bpw is not None else f"mixed-{self.nbytes}B")
        return Recipe(rules=rules, name=label)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: the budget, the prediction and each layer's choice."""
        return {
            "metric": self.metric,
            "budget_bytes": self.budget_bytes,
            "target_bpw": self.target_bpw,
            "nbytes": self.nbytes,
            "bits_per_weight": self.bits_per_weight,
            "predicted_effect": self.predicted_effect,
            "exact": self.exact,
            "counts": self.counts(),
            "choices": [
                {"layer": c.layer, "candidate": c.candidate, "scheme": str(c.rule.weight), "method": c.rule.method}
                | {"effect": c.effect, "nbytes": c.nbytes, "weight_nbytes": c.weight_nbytes}
                for c in self.choices
            ],
        }


def _bpw(choices: Sequence[LayerChoice | LayerSensitivity]) -> float | None:
    if any(c.weight_nbytes is None or c.weight_numel is None for c in choices):
        return None
    numel = sum(c.weight_numel or 0 for c in choices)
    return 8.0 * sum(c.weight_nbytes or 0 for c in choices) / numel if numel else None


def _candidate_rules(result: Sensitivity, candidates: Sequence[Recipe | str] | None) -> dict[str, Recipe]:
    """Each candidate label of ``result`` -> its recipe (labels as :func:`quanta.sensitivity` gives them)."""
    given: dict[str, Recipe] = {}
    for c in candidates or ():
        recipe = resolve_recipe(c)
        given[c if isinstance(c, str) else recipe.name] = recipe
    out = {}
    for label in result.candidates:
        if label in given:
            out[label] = given[label]
        elif candidates is None:
            out[label] = resolve_recipe(label)  # a preset name or a recipe JSON path
        else:
            raise QuantaError(f"candidate {label!r} of the sensitivity is not in candidates={list(given)}.")
    return out


def _rule(recipe: Recipe, entry: LayerSensitivity) -> Rule:
    """The candidate's rule for the layer (matched by name and the layer's class name, as quantize does)."""
    for rule in recipe.rules:
        if rule.module_type in (None, entry.kind) and fnmatch.fnmatchcase(entry.layer, rule.pattern):
            if rule.skip or rule.weight is None:
                break
            return rule
    raise QuantaError(
        f"candidate {entry.candidate!r} has no weight rule for {entry.layer} ({entry.kind}), yet the sensitivity "
        "measured it; pass the candidates the sensitivity was measured with (candidates=...)."
    )


def _solve(costs: list[list[int]], effects: list[list[float]], limit: int, max_cells: int) -> tuple[list[int], bool]:
    """Multiple-choice knapsack: one option per layer, ``sum cost <= limit``, least ``sum effect``.

    Returns the option index per layer and whether the DP was exact (see the module docstring).
    """
    base = [min(c) for c in costs]
    extra = [[c - b for c in cs] for cs, b in zip(costs, base, strict=True)]
    cap = limit - sum(base)  # >= 0: checked by the caller
    if sum(max(e) for e in extra) <= cap:  # every layer can take its best candidate
        return [min(zip(e, x, range(len(e)), strict=True))[2] for e, x in zip(effects, extra, strict=True)], True
    unit = math.gcd(*(x for xs in extra for x in xs)) or 1
    cells = max(2, max_cells // len(costs))  # columns of the table
    exact = cap // unit + 1 <= cells
    if not exact:
        unit = math.ceil(cap / (cells - 1))
    width = cap // unit + 1
    best = np.full(width, np.inf)
    best[0] = 0.0  # best[b]: least effect of the layers so far at exactly b units
    picks = np.zeros((len(costs), width), dtype=np.int8)
    for i, (xs, es) in enumerate(zip(extra, effects, strict=True)):
        new = np.full(width, np.inf)
        for j, (x, e) in enumerate(zip(xs, es, strict=True)):
            w = -(-x // unit)  # rounded up: a bucketed solution still fits the budget
            if w >= width:
                continue
            shifted = np.full(width, np.inf)
            shifted[w:] = best[: width - w] + e
            better = shifted < new  # strict: the earlier candidate wins ties
            new[better] = shifted[better]
            picks[i, better] = j
        best = new
    b = int(np.argmin(best))  # the first minimum: the fewest bytes among equally good allocations
    chosen = []
    for i in range(len(costs) - 1, -1, -1):
        j = int(picks[i, b])
        chosen.append(j)
        b -= -(-extra[i][j] // unit)
    return chosen[::-1], exact


def allocate(
    result: Sensitivity,
    budget_bytes: int | None = None,
    target_bpw: float | None = None,
    *,
    candidates: Sequence[Recipe | str] | None = None,
    max_cells: int = MAX_CELLS,
) -> Allocation:
    """Choose one candidate per measured layer to minimise the summed effect within a budget (exact knapsack).

    Args:
        result: per-layer sensitivities (:func:`quanta.sensitivity`).
        budget_bytes: the whole model's bytes (``quanta.model_nbytes``) at most.
        target_bpw: bits per quantized weight at most (packed weight bytes only; give this or ``budget_bytes``).
        candidates: the candidates the sensitivity was measured with, when some were Recipe objects (preset
            names and JSON paths are resolved from the labels).
        max_cells: DP table size above which costs are bucketed (``Allocation.exact`` is then False).

    Returns:
        An :class:`Allocation`; a budget above what the best candidates need gives each layer its best one.

    Raises:
        BudgetError: the budget is below what the cheapest candidate of every layer reaches (the message gives
            that minimum in bytes and bits per weight). QuantaError: no budget or both, a non-positive budget,
            ``target_bpw`` with a sensitivity that lacks weight sizes, an effect that is not finite.

    Example:
        >>> import quanta
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        >>> sens = quanta.sensitivity(net, ["w2a16-g32", "w8a16"], [torch.randn(128, 64)])
        >>> alloc = allocate(sens, target_bpw=6.0)
        >>> alloc.bits_per_weight <= 6.0, sorted(alloc.counts().values())
        (True, [1, 1])
    """
    if (budget_bytes is None) == (target_bpw is None):
        raise QuantaError("give one budget: budget_bytes=N (whole-model bytes) or target_bpw=B (bits per weight).")
    budget = budget_bytes if budget_bytes is not None else target_bpw
    if budget is None or not math.isfinite(budget) or budget <= 0:
        raise QuantaError(f"the budget must be a positive number, got {budget!r}.")
    rules = _candidate_rules(result, candidates)
    if len(rules) > 127:
        raise QuantaError(f"{len(rules)} candidates: allocate takes at most 127; measure fewer.")
    options = [[e for e in result.entries if e.layer == layer] for layer in result.layers]
    if any(not math.isfinite(e.effect) for opts in options for e in opts):
        raise QuantaError("the sensitivity holds an effect that is not finite; re-measure it on more data.")
    if target_bpw is not None and _bpw([e for opts in options for e in opts]) is None:
        raise QuantaError("this sensitivity has no weight sizes (written by an older quanta); measure it again.")
    fixed = result.float_nbytes - sum(opts[0].float_nbytes for opts in options)  # what no candidate quantizes
    numel = sum(opts[0].weight_numel or 0 for opts in options)
    if budget_bytes is not None:
        costs = [[e.nbytes for e in opts] for opts in options]
        limit = int(budget_bytes) - fixed
    else:
        costs = [[e.weight_nbytes or 0 for e in opts] for opts in options]
        limit = math.floor(float(budget) * numel / 8 + 1e-9)  # the bit budget in whole bytes
    cheapest = [opts[int(np.argmin(c))] for opts, c in zip(options, costs, strict=True)]
    if sum(min(c) for c in costs) > limit:
        low_bytes = fixed + sum(e.nbytes for e in cheapest)
        low_bpw = _bpw(cheapest)
        unit = "bytes" if budget_bytes is not None else "bits per weight"
        raise BudgetError(
            f"a budget of {budget:,} {unit} is below the smallest the candidates reach: {low_bytes:,} bytes"
            + ("" if low_bpw is None else f" ({low_bpw:.3f} bits per weight)")
            + f", every layer at its cheapest candidate ({', '.join(sorted({e.candidate for e in cheapest}))}); "
            "raise the budget or add a smaller candidate."
        )
    picks, exact = _solve(costs, [[e.effect for e in opts] for opts in options], limit, max_cells)
    chosen = tuple(
        LayerChoice(
            layer=e.layer,
            candidate=e.candidate,
            rule=_rule(rules[e.candidate], e),
            effect=e.effect,
            nbytes=e.nbytes,
            float_nbytes=e.float_nbytes,
            weight_nbytes=e.weight_nbytes,
            weight_numel=e.weight_numel,
        )
        for e in (opts[j] for opts, j in zip(options, picks, strict=True))
    )
    return Allocation(
        choices=chosen,
        metric=result.metric,
        float_nbytes=result.float_nbytes,
        budget_bytes=None if budget_bytes is None else int(budget_bytes),
        target_bpw=target_bpw,
        exact=exact,
    )
