"""How ``quanta.quantize`` runs the methods a recipe names: transforms, then per-weight rounding, then corrections.

``quantize`` plans its layers first; :class:`MethodPlan` is built from that plan and checks it (unknown method,
a scheme a method cannot use, a method that needs data without ``calib``) before anything is mutated. Then:

1. :meth:`MethodPlan.before` runs the transforms on the float model (``cle``) and lets the rounding methods gather
   their statistics (``adaround``'s ``E[x x^T]``), all before any layer is replaced;
2. :meth:`MethodPlan.quantize_weight` is called for each layer in place of plain RTN, inside
   :meth:`MethodPlan.sharing` (the codebook a ``shared`` scheme's rule fitted over all its layers in ``before``);
3. :meth:`MethodPlan.after` runs the corrections on the quantized model (``bc``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quanta.codec import quantize_tensor, shared_params
from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.base import Params
from quanta.methods.layers import has_matrix_view, linear_view, transposed_qtensor, weight_matrix
from quanta.methods.registry import Method, Methods, TransformTarget, calibration_list, parse_methods
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["MethodPlan", "Target"]


@dataclass(frozen=True)
class Target:
    """One planned layer: its name, the float module, the recipe's method field and its weight scheme, and the
    index of the recipe rule that matched it (layers of one rule share a ``shared`` scheme's codebook)."""

    name: str
    module: nn.Module
    method: str
    scheme: QScheme | None
    rule: int = 0


class MethodPlan:
    """The methods of one ``quantize`` call, validated on construction.

    Raises:
        UnsupportedError: an unknown method, or a weight scheme a method cannot use.
        QuantaError: a method needs calibration data and ``calib`` is None.
    """

    def __init__(self, targets: Sequence[Target], calib: Iterable[Any] | None) -> None:
        self.targets = list(targets)
        self.methods: dict[str, Methods] = {}
        for target in self.targets:
            methods = parse_methods(target.method)
            for method in methods.all:
                problem = None if method.check is None or target.scheme is None else method.check(target.scheme)
                if problem:
                    raise UnsupportedError(f"{target.name}: {problem}.")
                if method.needs_data and calib is None:
                    raise QuantaError(
                        f"method {method.name!r} (for {target.name}) learns from data: pass calib=... (an iterable "
                        "of model inputs, e.g. quanta.calib.inputs(loader)), or drop the method."
                    )
            self.methods[target.name] = methods
        needs_list = any(len(m.all) > 1 or m.needs_data for m in self.methods.values())
        # Several passes are made over the data when methods run, so a generator is read into a list once.
        self.calib: Iterable[Any] | None = calibration_list(calib) if needs_list else calib
        self._stats: dict[str, Any] = {}
        self._shared: dict[str, Params] = {}  # layer name -> the codebook its rule's layers share
        # GPT-2's Conv1D layers are shown to the methods as Linear views of the same storage
        self._views = {t.name: v for t in self.targets if (v := linear_view(t.module)) is not None}

    def _module(self, target: Target) -> nn.Module:
        return self._views.get(target.name, target.module)

    def _names(self, method: Method) -> list[str]:
        return [t.name for t in self.targets if method in self.methods[t.name].all and method.handles(self._module(t))]

    @contextlib.contextmanager
    def _viewed(self, model: nn.Module) -> Iterator[None]:
        """The model with its Conv1D targets replaced by their Linear views, restored afterwards."""
        originals = {name: model.get_submodule(name) for name in self._views}
        try:
            for name, view in self._views.items():
                model.set_submodule(name, view)
            yield
        finally:
            for name, module in originals.items():
                model.set_submodule(name, module)
                view = self._views[name]
                for attr, value in (("weight", view.weight.t()), ("bias", view.bias)):
                    own = module._parameters.get(attr)
                    if own is not None and value is not None and own.data_ptr() != value.data_ptr():
                        own.data.copy_(value.detach())  # a method replaced the view's tensor instead of editing it

    def _distinct(self, stage: str) -> list[Method]:
        found: list[Method] = []
        for methods in self.methods.values():
            for method in methods.all:
                if method.stage == stage and method not in found:
                    found.append(method)
        return found

    def _steps(self) -> list[Any]:
        return [] if self.calib is None else list(self.calib)

    def before(self, model: nn.Module) -> None:
        """Run the transforms, then gather the rounding methods' statistics (float model, nothing replaced yet)."""
        transforms = self._distinct("transform")
        collectors = [m for m in self._distinct("rounding") if m.collect is not None]
        if not transforms and not collectors:
            self._fit_shared()
            return  # plain RTN: the calibration data (maybe a one-shot generator) is left for the observers
        steps = self._steps()
        with self._viewed(model):
            for method in transforms:
                assert method.transform is not None
                names = set(self._names(method))
                plans = {
                    t.name: TransformTarget(t.scheme, self.methods[t.name].rounding)
                    for t in self.targets
                    if t.name in names
                }
                method.transform(model, plans, steps)
            for method in collectors:
                assert method.collect is not None
                self._stats[method.name] = method.collect(model, self._names(method), steps)
        self._fit_shared()

    def _fit_shared(self) -> None:
        """Fit one codebook per recipe rule whose scheme is ``shared``, over all of that rule's layers at once.

        The layers' weight matrices are concatenated into one tensor and fitted as the scheme's format fits one
        layer. When the rule's rounding method gathered ``E[x x^T]`` per layer (gptvq, iw, gptq), the fit is
        weighted by its diagonal, as ``iw`` weights one layer's fit, each layer's normalised to mean 1.
        """
        groups: dict[tuple[int, QScheme], list[Target]] = {}
        for t in self.targets:
            if t.scheme is not None and t.scheme.shared and has_matrix_view(self._module(t)):
                groups.setdefault((t.rule, t.scheme), []).append(t)
        for (_, scheme), members in groups.items():
            weights, importance = [], []
            stats = self._stats.get(self.methods[members[0].name].rounding.name)
            for t in members:
                w = weight_matrix(self._module(t)).detach().float()  # (out, K)
                weights.append(w.reshape(-1))
                h = stats.get(t.name) if isinstance(stats, dict) else None
                if isinstance(h, torch.Tensor) and h.shape == (w.shape[1], w.shape[1]):
                    # Normalised per layer: input energies differ by orders of magnitude between layers, and an
                    # unnormalised fit spends the shared entries on the most energetic layer (stories260K: 2x ppl).
                    diag = h.diagonal().float().clamp_min(0.0)
                    diag = diag / diag.mean().clamp_min(1e-30)
                    importance.append(diag.expand_as(w).reshape(-1))
            weight = torch.cat(importance) if len(importance) == len(members) else None
            fitted = quantize_tensor(torch.cat(weights), scheme, weight=weight).params
            for t in members:
                self._shared[t.name] = fitted

    def sharing(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The context in which layer ``name`` is quantized: coding onto its rule's shared codebook, if any."""
        params = self._shared.get(name)
        return contextlib.nullcontext() if params is None else shared_params(params)

    def rounds_weight(self, name: str, module: nn.Module, weight_name: str, axis: int | None) -> bool:
        """Whether the layer's rounding method quantizes this weight; else it is plain RTN.

        Rounding methods work on a layer's ``weight`` in the Linear/Conv layout; other weights (an LSTM's, a
        transposed GPT-2 Conv1D's) fall back to RTN, with a warning when a method other than RTN was asked for.
        """
        method = self.methods[name].rounding
        if method.name == "rtn":
            return False
        if weight_name == "weight" and (axis is None or (axis == 0 and name in self._views)):
            return True
        warnings.warn(f"{method.name} does not handle {name}.{weight_name}; using rtn.", stacklevel=3)
        return False

    def quantize_weight(self, name: str, module: nn.Module, scheme: QScheme) -> QTensor:
        """The layer's weight quantized by its rounding method."""
        method = self.methods[name].rounding
        view = self._views.get(name)
        if not method.handles(module if view is None else view):
            warnings.warn(f"{method.name} does not handle {type(module).__name__} ({name}); using rtn.", stacklevel=2)
            method = parse_methods("rtn").rounding
        assert method.round is not None
        if view is not None:
            return transposed_qtensor(method.round(name, view, scheme, self._stats.get(method.name)), module)
        return method.round(name, module, scheme, self._stats.get(method.name))

    def after(self, model: nn.Module) -> None:
        """Run the corrections on the quantized model (the targets' float modules are the references)."""
        corrections = self._distinct("correction")
        steps = self._steps() if corrections else []
        for method in corrections:
            assert method.correct is not None
            names = set(self._names(method))
            method.correct(model, {t.name: self._module(t) for t in self.targets if t.name in names}, steps)
