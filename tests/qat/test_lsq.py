"""LSQ and LSQ+: closed-form initial values and gradients of steps and learned zero points."""

from __future__ import annotations

import math

import torch

from quanta.qat.lsq import lsq_fake_quantize, lsq_step, lsq_zero, lsqplus_input_init, lsqplus_weight_step
from quanta.qat.quantizers import InputQuantizer, WeightQuantizer
from quanta.scheme import QScheme


def test_step_gradient_is_the_papers() -> None:
    # inside the grid d x_hat / d s = round(x / s) - x / s; clipped values give their level (Esser et al. eq. 3)
    x = torch.tensor([0.26, -0.74, 5.0, -9.0])
    s = torch.tensor(0.5, requires_grad=True)
    lsq_fake_quantize(x, lsq_step(s, torch.float32, 1.0), 0, -8, 7).sum().backward()
    v = x / 0.5
    expected = (v[:2].round() - v[:2]).sum() + 7 + (-8)
    assert math.isclose(float(s.grad), float(expected), rel_tol=1e-6)


def test_learned_zero_point_is_an_integer_code_with_a_gradient_only_from_clipped_values() -> None:
    z = torch.tensor(2.4, requires_grad=True)
    zq = lsq_zero(z, 0, 15, 0.5)
    assert float(zq) == 2.0
    x = torch.tensor([-2.0, 0.3, 1.0, 9.0])  # with s = 0.5, z = 2: -2.0 -> code -2 clipped to 0; 9.0 -> 20 -> 15
    lsq_fake_quantize(x, torch.tensor(0.5), zq, 0, 15).backward(torch.ones(4))
    # clipped values: d x_hat / d z = -s each, times the gradient scale 0.5
    assert math.isclose(float(z.grad), 2 * -0.5 * 0.5, rel_tol=1e-6)


def test_lsqplus_initial_grids() -> None:
    step, zero = lsqplus_input_init(-1.0, 3.0, 0, 15, asym=True)
    assert math.isclose(step, 4.0 / 15) and math.isclose(0 - (-1.0) / step, zero)
    assert lsqplus_input_init(-1.0, 3.0, -128, 127, asym=False) == (3.0 / 127, 0.0)
    w = torch.randn(4, 1, 64)
    mu, sigma = w.mean(-1), w.std(-1, correction=0)
    expected = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 8
    torch.testing.assert_close(lsqplus_weight_step(w, 4), expected)


def _fitted(method: str, x: torch.Tensor, bits: int) -> tuple[InputQuantizer, float]:
    q = InputQuantizer(QScheme.parse(f"int{bits}:tensor:asym"), method)
    q(x)  # min/max initialisation on the first batch
    params = [q.step] + ([q.zero] if method == "lsqplus" else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        loss = ((q(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q, float(loss.detach())


def test_lsqplus_moves_the_offset_that_lsq_keeps() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.rand(4088) * 4, -torch.ones(8)])  # skewed: min/max spends levels on 8 negative values
    lsq, lsq_loss = _fitted("lsq", x, 2)
    plus, plus_loss = _fitted("lsqplus", x, 2)
    assert plus_loss < 0.7 * lsq_loss
    (_, lsq_zero_point), (scale, zero) = lsq.qparams(), plus.qparams()
    assert int(zero) < int(lsq_zero_point)  # the grid slid towards the positive values
    assert zero.dtype == torch.int32 and -2 <= int(zero) <= 1
    assert torch.equal(plus.eval()(x), ((torch.round(x * (1 / scale)) + zero).clamp(-2, 1) - zero) * scale)


def test_lsqplus_weights_learn_zero_points_of_asymmetric_grids() -> None:
    w = torch.randn(8, 32) + 0.5
    q = WeightQuantizer(w, QScheme.parse("int4:ch:asym"), "lsqplus")
    assert isinstance(q.zero, torch.nn.Parameter)
    w.requires_grad_(True)
    ((q(w) - w.detach()) ** 2).sum().backward()
    assert q.zero.grad is not None and q.step.grad is not None
    assert torch.equal(q.qtensor(w).dequantize(), q(w).detach())  # the packed codes are what training saw
