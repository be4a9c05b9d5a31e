"""Accuracy under input perturbations: seeded Gaussian noise and FGSM, for a float model and its quantized copies.

Gaussian noise: ``x + sigma * N(0, 1)`` in the model's input units (normalized images), one noise tensor per sigma
drawn from a generator seeded with ``seed``, the same for every model compared. FGSM (Goodfellow et al., 2015):
``x + eps * sign(grad_x CE(model(x), y))``, each model attacked through its own gradient (white box). A packed
model is differentiated as it runs: its dequantized weights are constants and quantized activations pass the
gradient straight through (``QuantModule.quantize_input``), so the attack sees what the deployed model computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError

__all__ = ["DEFAULT_EPSILONS", "DEFAULT_SIGMAS", "Robustness", "fgsm_accuracy", "noise_accuracy", "robustness"]

DEFAULT_SIGMAS = (0.0, 0.25, 0.5, 1.0)  # input units: for MNIST normalized by std 0.3081, 1.0 ~ 0.31 of a pixel range
DEFAULT_EPSILONS = (0.0, 0.05, 0.1, 0.2)

Data = tuple[torch.Tensor, torch.Tensor]


def _check(data: Data, levels: Sequence[float], what: str) -> None:
    x, y = data
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise QuantaError(f"robustness needs (x, y) with as many labels as images, got {len(x)} and {len(y)}.")
    if any(v < 0 for v in levels):
        raise QuantaError(f"{what} must be non-negative, got {list(levels)}.")


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(-1) == y).sum())


def noise_accuracy(model: nn.Module, data: Data, sigma: float, seed: int = 0, batch_size: int = 256) -> float:
    """Top-1 accuracy on ``x + sigma * N(0, 1)`` (noise drawn from a generator seeded with ``seed``).

    Raises:
        QuantaError: empty data, mismatched labels, or a negative sigma.
    """
    _check(data, [sigma], "sigma")
    x, y = data
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    noisy = x + sigma * noise
    correct = sum(_correct(model, xb, yb) for xb, yb in zip(noisy.split(batch_size), y.split(batch_size), strict=True))
    return correct / len(y)


def fgsm_accuracy(model: nn.Module, data: Data, eps: float, batch_size: int = 256) -> float:
    """Top-1 accuracy on FGSM examples ``x + eps * sign(grad_x cross_entropy(model(x), y))``.

    Raises:
        QuantaError: empty data, mismatched labels, a negative eps, or a model whose output has no gradient.
    """
    _check(data, [eps], "eps")
    x, y = data
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        xb = xb.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), yb)  # log-softmax outputs work too: log_softmax is idempotent
            if not loss.requires_grad:
                raise QuantaError(f"{type(model).__name__}'s output has no gradient w.r.t. its input; FGSM needs one.")
            (grad,) = torch.autograd.grad(loss, xb)  # input gradient only: no parameter .grad is touched
        correct += _correct(model, xb.detach() + eps * grad.sign(), yb)
    return correct / len(y)


@dataclass(frozen=True)
class Robustness:
    """Accuracy per model (label -> one value per level) under noise (``sigmas``) and FGSM (``epsilons``)."""

    sigmas: list[float]
    epsilons: list[float]
    noise: dict[str, list[float]]
    fgsm: dict[str, list[float]]
    images: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def robustness(
    models: Mapping[str, nn.Module],
    data: Data,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    seed: int = 0,
    batch_size: int = 256,
) -> Robustness:
    """Accuracy of each model under Gaussian input noise at each sigma and under FGSM at each epsilon.

    Args:
        models: label -> classifier, e.g. ``{"float": net, "w8a8": quantized}``; all see the same noise.
        data: ``(x, y)`` images and integer labels.
        sigmas: noise standard deviations, in input units.
        epsilons: FGSM step sizes, in input units.
        seed: seeds the noise (the same draw for every model, a new one per sigma index).

    Returns:
        A :class:`Robustness`; at level 0 each entry equals the plain accuracy.

    Raises:
        QuantaError: no models, empty data or negative levels.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> r = robustness({"float": net}, (torch.randn(20, 4), torch.randint(0, 3, (20,))), [0.0], [0.0])
        >>> r.noise["float"] == r.fgsm["float"]
        True
    """
    if not models:
        raise QuantaError("robustness needs at least one model, e.g. {'float': net}.")
    _check(data, sigmas, "sigmas")
    _check(data, epsilons, "epsilons")
    noise = {
        k: [noise_accuracy(m, data, s, seed + i, batch_size) for i, s in enumerate(sigmas)] for k, m in models.items()
    }
    fgsm = {k: [fgsm_accuracy(m, data, e, batch_size) for e in epsilons] for k, m in models.items()}
    return Robustness([float(s) for s in sigmas], [float(e) for e in epsilons], noise, fgsm, len(data[1]), seed)
