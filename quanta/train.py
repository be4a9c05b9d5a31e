"""A small training loop for the common case of quantization-aware training (any plain PyTorch loop works too).

``fit(model, data)`` runs Adam over ``(x, y)`` batches with cross-entropy, optionally distilling from a float
``teacher`` (Hinton et al. 2015): the loss is ``(1 - kd_weight) * CE(student, y) + kd_weight * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``. The model is left in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError
from quanta.qat import freeze, is_prepared

__all__ = ["distillation_loss", "fit"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def fit(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    teacher: nn.Module | None = None,
    kd_weight: float = 0.5,
    temperature: float = 2.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    optimizer: torch.optim.Optimizer | None = None,
    freeze_at: int | None = None,
) -> list[float]:
    """Train ``model`` in place on ``data`` (re-iterated each epoch) and return each epoch's mean loss.

    ``freeze_at``: after this many optimizer steps, freeze a QAT model's observers and BatchNorm statistics
    (:func:`quanta.qat.freeze`) for the rest of training.

    Raises:
        QuantaError: no batches, ``epochs < 1``, ``kd_weight`` outside [0, 1], ``freeze_at < 0``, or
            ``freeze_at`` on a model not prepared for QAT.
    """
    if epochs < 1:
        raise QuantaError(f"epochs must be >= 1, got {epochs}.")
    if not 0.0 <= kd_weight <= 1.0:
        raise QuantaError(f"kd_weight must be in [0, 1], got {kd_weight}.")
    if freeze_at is not None and freeze_at < 0:
        raise QuantaError(f"freeze_at must be >= 0 optimizer steps, got {freeze_at}.")
    if freeze_at is not None and not is_prepared(model):
        raise QuantaError("freeze_at freezes QAT observers: prepare the model with quanta.prepare_qat first.")
    optimizer = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if teacher is not None:
        teacher.eval()
    history = []
    step = 0
    for _ in range(epochs):
        model.train()
        total, batches = 0.0, 0
        for x, y in data:
            if step == freeze_at:
                freeze(model)
            out = model(x)
            loss = loss_fn(out, y)
            if teacher is not None and kd_weight > 0:
                with torch.no_grad():
                    target = teacher(x)
                loss = (1 - kd_weight) * loss + kd_weight * distillation_loss(out, target, temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach())
            batches += 1
        if batches == 0:
            raise QuantaError("fit got no batches; pass an iterable of (inputs, labels) that can be re-iterated.")
        history.append(total / batches)
    model.eval()
    return history
