"""quanta.train.fit: the loop trains, and distillation pulls the student toward its teacher."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quanta.errors import QuantaError
from quanta.qat import prepare_qat
from quanta.train import distillation_loss, fit


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = (x[:, :8].sum(1) > 0).long()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]


def test_distillation_loss_is_the_scaled_kl_divergence() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    p = F.softmax(t / 3, dim=-1)
    manual = (p * (p.log() - F.log_softmax(s / 3, dim=-1))).sum(-1).mean() * 9
    torch.testing.assert_close(distillation_loss(s, t, 3.0), manual)


def test_fit_trains_a_qat_model_and_distills_toward_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    fit(teacher, _data(), epochs=20, lr=1e-2)
    student = prepare_qat(copy.deepcopy(teacher), "w4a8")
    with torch.no_grad():
        student[0].weight.add_(torch.randn_like(student[0].weight) * 0.3)  # start away from the teacher
    x = torch.cat([b[0] for b in _data()])

    def gap() -> float:
        with torch.no_grad():
            return float(distillation_loss(student(x), teacher(x), 1.0))

    before = gap()
    history = fit(student, _data(), epochs=10, lr=1e-3, teacher=teacher, kd_weight=1.0)
    assert history[-1] < history[0] and gap() < 0.5 * before
    assert not student.training
    with pytest.raises(QuantaError, match="kd_weight"):
        fit(student, _data(), kd_weight=2.0)
    with pytest.raises(QuantaError, match="no batches"):
        fit(student, [])
