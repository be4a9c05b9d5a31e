"""BatchNorm in QAT: simulated folding trains the folded weight; freezing makes training see inference."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quanta.codec import fake_quantize
from quanta.qat import convert, freeze, prepare_qat
from quanta.qat.batchnorm import FrozenBatchNorm
from quanta.scheme import QScheme
from quanta.train import fit


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8),
        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
    )  # fmt: skip
    net.train()
    with torch.no_grad():  # give the BatchNorms non-trivial statistics and affine parameters
        for _ in range(5):
            net(torch.randn(32, 1, 8, 8) * 3 + 1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(32, 1, 8, 8, generator=g) * 3 + 1 for _ in range(4)]
    return [(x, (x[:, 0, :4].mean(dim=(1, 2)) > 1).long() + 2 * (x[:, 0, 4:].mean(dim=(1, 2)) > 1).long()) for x in xs]


def test_folded_pair_in_eval_mode_is_the_folded_quantized_layer() -> None:
    net = _net()
    bn = net[1]
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_weight = net[0].weight * factor.reshape(-1, 1, 1, 1)
    folded_bias = (net[0].bias - bn.running_mean) * factor + bn.bias
    x = torch.randn(4, 1, 8, 8)
    expected = torch.nn.functional.conv2d(x, fake_quantize(folded_weight, QScheme.parse("int4:ch:asym")), folded_bias)
    model = prepare_qat(copy.deepcopy(net), "w4a16")
    with torch.no_grad():
        torch.testing.assert_close(model[1](model[0](x)), expected, rtol=1e-5, atol=1e-5)


def test_trained_folded_model_converts_to_layers_without_batchnorm() -> None:
    model = prepare_qat(_net(), "w4a8")
    running_before = model[1].running_mean.clone()
    fit(model, _batches(), epochs=3, lr=1e-3)
    assert not torch.equal(model[1].running_mean, running_before)  # the BatchNorm kept normalising with batches
    x = _batches()[0][0]
    with torch.no_grad():
        fake = model(x)
        convert(model)
        assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Identity)
        # in eval mode the twins computed the folded layers themselves: the same operations, the same bits
        assert torch.equal(model(x), fake)


def test_unfolded_model_keeps_its_batchnorms() -> None:
    model = prepare_qat(_net(), "w4a8", fold_bn=False)
    fit(model, _batches(), epochs=1)
    x = _batches()[0][0]
    with torch.no_grad():
        fake = model(x)
        convert(model)
        assert isinstance(model[1], nn.BatchNorm2d)
        assert torch.equal(model(x), fake)


def test_frozen_training_step_sees_what_inference_sees() -> None:
    model = prepare_qat(_net(), "w4a8", calib=[b[0] for b in _batches()])
    fit(model, _batches(), epochs=1)
    freeze(model)
    assert isinstance(model[1], FrozenBatchNorm)
    stats = model[1].running_var.clone()
    lo = model[3].input_quantizer.lo.clone()
    x = _batches()[1][0]
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    assert torch.equal(train_out, eval_out)
    fit(model, _batches(), epochs=1)
    assert torch.equal(model[1].running_var, stats) and torch.equal(model[3].input_quantizer.lo, lo)
    convert(model)
    assert not any(isinstance(m, FrozenBatchNorm) for m in model.modules())


def test_fit_freezes_at_the_chosen_step() -> None:
    model = prepare_qat(_net(), "w4a8")
    fit(model, _batches(), epochs=2, freeze_at=5)  # 4 batches per epoch: frozen during the second epoch
    assert isinstance(model[1], FrozenBatchNorm) and bool(model[0].input_quantizer.frozen)
