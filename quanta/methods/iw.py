"""Input-weighted codebook fitting (``iw``): fit a codebook format with each weight's importance ``diag(H)``.

A layer's output error from a weight error ``dW`` is ``E |dW x|^2 = tr(dW H dW^T)`` with ``H = E[x x^T]`` (K, K);
keeping only the diagonal, weight ``W[o, j]`` matters in proportion to ``H[j, j]``, the energy of input ``j``. So
``iw`` passes ``weight = diag(H)`` (broadcast over output rows) to :func:`~quanta.quantize_tensor`, and formats
that fit a codebook use it: ``vq{d}x{k}`` runs weighted k-means (assignments and centres minimise
``sum H[j, j] (w - c)^2``), ``lloydN`` weighted Lloyd-Max. Statistics come from the same calibration pass as GPTQ.
"""

from __future__ import annotations

import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.formats.codebook import LloydFormat
from quanta.formats.vector import VectorFormat
from quanta.methods.adaround import hessian_rounding
from quanta.methods.registry import Method, register_method
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["check_scheme", "iw_weight"]


def check_scheme(scheme: QScheme) -> str | None:
    """Why ``iw`` cannot quantize with ``scheme`` (its format fits no codebook), or ``None`` when it can."""
    if not isinstance(scheme.fmt, (VectorFormat, LloydFormat)):
        return f"iw weights a codebook fit; {scheme} fits none (use a vq{{d}}x{{k}} or lloydN format)"
    return None


@torch.no_grad()
def iw_weight(layer: nn.Module, scheme: QScheme, hessian: torch.Tensor) -> QTensor:
    """Quantize ``layer.weight`` with ``scheme``, each weight's importance the energy ``H[j, j]`` of its input.

    Args:
        layer: a Linear or ungrouped Conv layer.
        scheme: a codebook scheme (``vq4x256:tensor:sf16``, ``lloyd3:ch``).
        hessian: ``E[x x^T]`` (K, K) of the layer's input vectors; only its diagonal is used.

    Example:
        >>> lin = torch.nn.Linear(64, 8)
        >>> iw_weight(lin, QScheme.parse("vq2x16"), torch.eye(64)).shape
        torch.Size([8, 64])
    """
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    out = weight.shape[0]
    importance = hessian.diagonal().float().clamp_min(0.0).expand(out, -1).reshape(weight.shape)
    return quantize_tensor(weight.detach(), scheme, weight=importance)


_collect, _round = hessian_rounding("iw", iw_weight)

register_method(
    Method(
        "iw",
        "rounding",
        "input-weighted codebook fit: k-means / Lloyd-Max weighted by diag(E[x x^T]) on calibration data (vq, lloyd)",
        needs_data=True,
        collect=_collect,
        round=_round,
        check=check_scheme,
    )
)
