"""Layer-output error of a quantized model against its float reference, the yardstick every method is held to.

Both models run the same inputs end to end (so each layer sees what it sees at inference, upstream errors
included); forward hooks record the outputs of the named layers. The error of a layer is its relative MSE,
``mean((y_q - y_f)^2) / mean(y_f^2)``, so layers of different magnitude weigh the same in an average.

Cross-layer equalization divides the outputs of the first layer of each pair by per-channel scales; pass them as
``scales`` and those outputs are multiplied back before comparing, so every model is measured in the float
model's coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from quanta.errors import QuantaError
from quanta.methods.layers import channel_dim

__all__ = ["layer_output_errors"]


def _record(model: nn.Module, names: Sequence[str], store: dict[str, list[torch.Tensor]]) -> list[RemovableHandle]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise QuantaError(f"no module named {missing[0]!r} in {type(model).__name__}; pass names from named_modules().")
    handles: list[RemovableHandle] = []
    for name in names:

        def hook(_m: nn.Module, _args: object, out: torch.Tensor, name: str = name) -> None:
            store.setdefault(name, []).append(out.detach().float())

        handles.append(modules[name].register_forward_hook(hook))
    return handles


def layer_output_errors(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Iterable[torch.Tensor],
    names: Sequence[str],
    scales: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Relative output MSE of each named layer of ``candidate`` against the same layer of ``reference``.

    Args:
        reference: the float model.
        candidate: the quantized (or transformed) model with the same layer names.
        inputs: batches run through both models.
        names: layers to compare.
        scales: per-channel factors the candidate's outputs are multiplied by first (from
            :func:`quanta.methods.equalize`: ``{first: scale}``).

    Returns:
        ``{name: mean((y_q - y_f)^2) / mean(y_f^2)}``.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> layer_output_errors(m, m, [torch.randn(2, 4)], ["0"])
        {'0': 0.0}
    """
    scales = scales or {}
    squared: dict[str, float] = dict.fromkeys(names, 0.0)
    energy: dict[str, float] = dict.fromkeys(names, 0.0)
    ref_out: dict[str, list[torch.Tensor]] = {}
    cand_out: dict[str, list[torch.Tensor]] = {}
    handles = _record(reference, names, ref_out) + _record(candidate, names, cand_out)
    layers = dict(reference.named_modules())  # float types say where the channels are
    try:
        with torch.no_grad():
            for batch in inputs:
                reference(batch)
                candidate(batch)
                for name in names:
                    for y_f, y_q in zip(ref_out.pop(name, []), cand_out.pop(name, []), strict=True):
                        if name in scales:
                            dim = channel_dim(layers[name], y_q)
                            shape = [1] * y_q.dim()
                            shape[dim] = -1
                            y_q = y_q * scales[name].reshape(shape)
                        squared[name] += float((y_q - y_f).pow(2).sum())
                        energy[name] += float(y_f.pow(2).sum())
    finally:
        for handle in handles:
            handle.remove()
    return {name: squared[name] / max(energy[name], 1e-30) for name in names}
