"""BatchNorm in quantization-aware training: folding into the layer before it, and freezing its statistics.

A convolution or linear layer followed by a BatchNorm is deployed as one layer with the BatchNorm folded in
(:mod:`quanta.methods.bn_fold`), so QAT must train the folded weight's quantization. The twin quantizes
``W * gamma / sqrt(running_var + eps)`` and divides its output by the same factor, so the BatchNorm, left where it
is, normalises as usual: with batch statistics in training (updating its running ones), with running statistics
in eval mode, where the pair computes exactly the folded layer. ``convert`` folds it for good and replaces the
BatchNorm by ``Identity``.

Whenever a folded pair normalises with running statistics (eval mode, or a frozen BatchNorm), the twin computes
the folded layer itself, ``conv(x, Q(W * factor)) + folded bias``, and the BatchNorm passes its input through
(:class:`FoldedBatchNorm`): the same operations as the converted layer, so conversion changes nothing there.

Freezing (:func:`freeze_batchnorm`, e.g. late in training) switches each BatchNorm to running statistics in
training too, and stops updating them: then training sees exactly what inference will. ``convert`` (or
:func:`unfreeze_batchnorm`) restores the ordinary classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FoldedBatchNorm",
    "FrozenBatchNorm",
    "fold_factor",
    "folded_bias",
    "freeze_batchnorm",
    "mark_folded",
    "normalises_with_running_stats",
    "unfreeze_batchnorm",
]

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_factor(bn: nn.Module) -> torch.Tensor:
    """``gamma / sqrt(running_var + eps)`` per channel (``gamma`` keeps its gradient)."""
    assert isinstance(bn, NORMS) and bn.running_var is not None
    std = torch.sqrt(bn.running_var + bn.eps)
    return std.reciprocal() if bn.weight is None else bn.weight / std


def folded_bias(bias: torch.Tensor | None, bn: nn.Module) -> torch.Tensor:
    """The bias of the folded layer: ``(b - running_mean) * factor + beta``."""
    assert isinstance(bn, NORMS) and bn.running_mean is not None
    b = torch.zeros_like(bn.running_mean) if bias is None else bias
    beta = torch.zeros_like(bn.running_mean) if bn.bias is None else bn.bias
    return (b - bn.running_mean) * fold_factor(bn) + beta


def _is_folded(bn: nn.Module) -> bool:
    return bool(bn.__dict__.get("_quanta_folded", False))


class FrozenBatchNorm:
    """Mixin of frozen BatchNorms: running statistics in training and eval, never updated (a folded one passes its
    input through: its layer computes the folded output)."""

    _unfrozen: type[nn.Module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self
        assert isinstance(bn, NORMS)
        if _is_folded(bn):
            return x
        bn._check_input_dim(x)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class FoldedBatchNorm:
    """Mixin of a BatchNorm folded into the layer before it: batch statistics in training, as usual; in eval mode
    it passes its input through, because the layer already computed the folded output."""

    _unfolded: type[nn.Module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self, NORMS)
        if not self.training:
            return x
        return self._unfolded.forward(self, x)


_FROZEN: dict[type[nn.Module], type[nn.Module]] = {
    norm: type(f"Frozen{norm.__name__}", (FrozenBatchNorm, norm), {"_unfrozen": norm}) for norm in NORMS
}
_FOLDED: dict[type[nn.Module], type[nn.Module]] = {
    norm: type(f"Folded{norm.__name__}", (FoldedBatchNorm, norm), {"_unfolded": norm}) for norm in NORMS
}


def _plain(module: nn.Module) -> type[nn.Module]:
    """The ordinary BatchNorm class of a possibly frozen or folded one."""
    if isinstance(module, FrozenBatchNorm):
        return module._unfrozen
    if isinstance(module, FoldedBatchNorm):
        return module._unfolded
    return type(module)


def mark_folded(bn: nn.Module) -> None:
    """Mark ``bn`` as folded into the layer before it (that layer's QAT twin computes the folded output)."""
    bn.__dict__["_quanta_folded"] = True
    if not isinstance(bn, (FrozenBatchNorm, FoldedBatchNorm)):
        bn.__class__ = _FOLDED[type(bn)]


def normalises_with_running_stats(bn: nn.Module) -> bool:
    """Whether ``bn`` uses its running statistics now (eval mode, or frozen)."""
    return isinstance(bn, FrozenBatchNorm) or not bn.training


def freeze_batchnorm(model: nn.Module) -> int:
    """Freeze every BatchNorm of ``model`` that tracks running statistics (in place); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm):
            continue
        frozen = _FROZEN.get(_plain(module))
        if frozen is not None and getattr(module, "track_running_stats", False):
            module.__class__ = frozen
            count += 1
    return count


def unfreeze_batchnorm(model: nn.Module) -> None:
    """Give every frozen or folded BatchNorm of ``model`` its ordinary class back (and forget the folding)."""
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm, FoldedBatchNorm)):
            module.__class__ = _plain(module)  # type: ignore[assignment]
            module.__dict__.pop("_quanta_folded", None)
