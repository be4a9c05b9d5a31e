"""PACT: the forward value is the static grid of [lo, alpha], the gradients are PACT's straight-through ones."""

from __future__ import annotations

import torch

from quanta.primitives.affine import affine_qparams
from quanta.primitives.ste import fake_quantize_affine
from quanta.qat.pact import PERCENTILE, pact_clip_level, pact_fake_quantize
from quanta.qat.quantizers import InputQuantizer
from quanta.scheme import QScheme


def test_value_is_the_grid_of_the_clipping_range_and_gradients_are_pacts() -> None:
    x = torch.tensor([-0.5, 0.0, 0.3, 0.9, 1.2, 2.0, 3.5], requires_grad=True)
    alpha = torch.tensor(1.5, requires_grad=True)
    lo = torch.tensor(0.0)
    scale, zero = affine_qparams(lo, alpha.detach(), -8, 7)
    y = pact_fake_quantize(x, lo, alpha, scale, zero, -8, 7)
    assert torch.equal(y.detach(), fake_quantize_affine(x.detach(), scale, zero, -8, 7))
    upstream = torch.arange(1.0, 8.0)
    y.backward(upstream)
    inside = (x.detach() >= 0) & (x.detach() <= 1.5)
    assert torch.equal(x.grad, upstream * inside)
    # d y / d alpha = 1 for every input above alpha (2.0 and 3.5: upstream 6 + 7)
    assert float(alpha.grad) == 13.0


def test_symmetric_pact_clips_both_sides_with_one_level() -> None:
    q = InputQuantizer(QScheme.parse("int8:tensor:sym"), "pact")
    x = torch.linspace(-4, 4, 801)
    q(x)  # the first batch sets alpha
    assert abs(float(q.alpha) - pact_clip_level(x)) < 1e-6
    q.alpha.data.fill_(2.0)
    x = torch.tensor([-3.0, -1.0, 1.0, 2.5], requires_grad=True)
    q(x).backward(torch.ones(4))
    # +1 from 2.5 (above alpha), -1 from -3.0 (below -alpha)
    assert float(q.alpha.grad) == 0.0
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_initial_clip_level_is_the_percentile_of_magnitudes() -> None:
    values = torch.arange(1.0, 10001.0)
    assert pact_clip_level(values) == float(torch.quantile(values, PERCENTILE, interpolation="lower"))


def test_alpha_learns_the_clipping_the_task_asks_for() -> None:
    # the target clips at 2: PACT's gradient (values above alpha) raises alpha from 0.5 to about 2 and no further
    q = InputQuantizer(QScheme.parse("int8:tensor:asym"), "pact")
    x = torch.rand(4096) * 4
    q(x)
    q.alpha.data.fill_(0.5)
    opt = torch.optim.Adam([q.alpha], lr=2e-2)
    for _ in range(300):
        loss = ((q(x) - x.clamp(max=2.0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(q.alpha) - 2.0) < 0.1
