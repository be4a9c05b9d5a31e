"""Quantization-aware training: prepare_qat -> train -> convert gives the packed model of the trained grids."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.codec import fake_quantize
from quanta.errors import QuantaError, UnsupportedError
from quanta.nn.base import QuantModule
from quanta.qat import convert, is_prepared, prepare_qat
from quanta.qat.quantizers import WeightQuantizer, check_qat_scheme
from quanta.scheme import QScheme


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )  # fmt: skip


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, (x[:, 0, :4].sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 4:].sum(dim=(1, 2)) > 0).long()


def _train(model: nn.Module, steps: int = 30, data: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[float]:
    """Adam at 1e-2 on one batch (``_data()`` unless given); the loss of every step."""
    x, y = _data() if data is None else data
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


PRESETS = ["w4a4", "w4a4-lsq", "w4a4-lsqplus", "w4a4-pact", "w4a16-g32", "w2a8-lsq", "binary", "ternary", "bnn", "q4.4"]


@pytest.mark.parametrize("preset", PRESETS)
def test_converted_model_equals_the_trained_fake_quantized_model(preset: str, tmp_path: Path) -> None:
    model = prepare_qat(_net(), preset)
    losses = _train(model, 40)
    assert losses[-1] < 0.9 * losses[0]  # it learns through the fake quantizers
    model.eval()
    x, _ = _data(16)
    with torch.no_grad():
        fake = model(x)
    convert(model)
    assert not is_prepared(model)
    assert isinstance(model[2], QuantModule)  # binary, ternary and bnn keep the first and last layers in float
    with torch.no_grad():
        assert torch.equal(model(x), fake)  # the same grids, the same float operations
    quanta.save(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(quanta.load(tmp_path / "m", _net(5))(x), fake)


def test_observed_weight_grid_is_rtn_and_lsq_starts_at_the_papers_step() -> None:
    w = torch.randn(16, 32)
    scheme = QScheme.parse("int4:ch:sym")
    torch.testing.assert_close(WeightQuantizer(w, scheme, "rtn")(w), fake_quantize(w, scheme), rtol=0, atol=0)
    lsq = WeightQuantizer(w, scheme, "lsq")
    # 2 mean|w| / sqrt(Q_p), Q_p = 7 for signed 4-bit codes (Esser et al. 2020)
    torch.testing.assert_close(lsq.step, (2 * w.abs().mean(dim=1, keepdim=True) / 7**0.5).reshape(16, 1))
    w.requires_grad_(True)
    lsq(w).sum().backward()
    assert lsq.step.grad is not None and bool((lsq.step.grad != 0).any())  # the step sizes are trained


def test_qat_recovers_accuracy_post_training_quantization_loses() -> None:
    float_model = _net()
    _train(float_model, 60)
    x, y = _data()
    ptq = quanta.quantize(copy.deepcopy(float_model), "w2a8", calib=[x])
    qat = prepare_qat(copy.deepcopy(float_model), "w2a8-lsq")
    _train(qat, 60)
    convert(qat.eval())
    with torch.no_grad():
        ptq_loss = float(nn.functional.cross_entropy(ptq(x), y))
        qat_loss = float(nn.functional.cross_entropy(qat(x), y))
    assert qat_loss < ptq_loss


def test_bad_input_is_named_before_anything_changes() -> None:
    model = _net()
    with pytest.raises(UnsupportedError, match="post-training"):
        prepare_qat(model, "w4a4-gptq")
    with pytest.raises(UnsupportedError, match="no QAT form"):
        prepare_qat(model, "nf4-g64")
    with pytest.raises(UnsupportedError, match="LSQ learns integer grids"):
        check_qat_scheme(QScheme.parse("binary:ch"), "lsq")
    assert type(model[0]) is nn.Conv2d  # untouched
    with pytest.raises(QuantaError, match=r"prepare it with quanta\.prepare_qat"):
        convert(model)
    with pytest.raises(UnsupportedError, match=r"use quanta\.prepare_qat"):
        quanta.quantize(copy.deepcopy(model), "w4a4-lsq", calib=[_data()[0]])
    prepare_qat(model, "w4a4")
    with pytest.raises(QuantaError, match="already quantized or prepared"):
        prepare_qat(model, "w4a4")


def test_calibration_initialises_input_ranges_from_the_float_activations() -> None:
    x1, x2 = _data(16)[0], _data(32)[0] * 2
    float_model = _net()
    seen: list[torch.Tensor] = []
    hook = float_model[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        float_model(x1), float_model(x2)
    hook.remove()
    model = prepare_qat(copy.deepcopy(float_model), "w4a4", calib=[x1, x2])
    q = model[2].input_quantizer
    assert float(q.lo) == min(float(t.min()) for t in seen) and float(q.hi) == max(float(t.max()) for t in seen)
    assert model.training == float_model.training
    pact = prepare_qat(copy.deepcopy(float_model), "w4a4-pact", calib=[x1, x2])
    assert float(pact[2].input_quantizer.lo) == 0.0  # post-ReLU inputs: PACT's [0, alpha]
    with pytest.raises(QuantaError, match="calibration data is empty"):
        prepare_qat(copy.deepcopy(float_model), "w4a4", calib=[])


class _Tagger(nn.Module):
    def __init__(self, rnn: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = rnn(6, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0]).flatten(0, 1)


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_recurrent_layers_train_and_convert_to_their_packed_twins(rnn: type[nn.LSTM] | type[nn.GRU]) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 12, 6, generator=g)
    y = (x.cumsum(dim=1)[..., 0] > 0).long() + (x[..., 1] > 0.5).long()
    model = prepare_qat(_Tagger(rnn), "w4a8")
    assert type(model.rnn) is type(quanta.quantize(_Tagger(rnn), "w8a16").rnn)  # QuantLSTM / QuantGRU
    assert isinstance(model.rnn, QuantModule) and model.rnn.fake_quantized
    assert len(model.rnn.weight_quantizers) == 4  # ih and hh of two layers
    losses = _train(model, 30, (x, y.flatten()))
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    with torch.no_grad():
        fake = model(x)
        convert(model)
        assert isinstance(model.rnn, QuantModule) and not model.rnn.fake_quantized
        assert torch.equal(model(x), fake)


def test_prepared_layers_are_the_ptq_classes_fake_quantized_and_convert_packs_the_same_objects(tmp_path: Path) -> None:
    float_model = _net()
    ptq = quanta.quantize(copy.deepcopy(float_model), "w4a8", calib=[_data()[0]])
    model = copy.deepcopy(float_model)
    conv_weight, linear_bias = model[2].weight, model[5].bias
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built on the float model, before prepare_qat
    prepare_qat(model, "w4a8")
    layers = [model[i] for i in (0, 2, 5)]
    for layer, packed in zip(layers, [ptq[i] for i in (0, 2, 5)], strict=True):
        assert type(layer) is type(packed)  # QuantConv2d, QuantConv2d, QuantLinear: what quanta.quantize builds
        assert isinstance(layer, QuantModule) and layer.fake_quantized and not packed.fake_quantized
        assert "fake-quantized" in repr(layer)
    assert model[2].weight is conv_weight and model[5].bias is linear_bias  # the float layer's own parameters
    float_names = [n for n, _ in float_model.named_parameters()]
    assert [n for n, _ in model.named_parameters() if "quantizer" not in n] == float_names  # in the same order
    with pytest.raises(QuantaError, match=r"quanta\.convert"):
        quanta.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(QuantaError, match=r"quanta\.convert"):
        quanta.quantize(model, "w8a16")
    x, y = _data()
    before = conv_weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(conv_weight, before)  # the optimizer built before prepare_qat trains the master weight
    convert(model.eval())
    assert [model[i] for i in (0, 2, 5)] == layers  # packed in place: the same module objects
    assert not model[2].fake_quantized and "weight" not in model[2]._parameters
    assert model[2].weight_codes.dtype == torch.uint8 and model[2].bias is not None and not model[2].bias.requires_grad


def test_prepared_model_deep_copies_and_resumes_from_its_state_dict() -> None:
    x = _data()[0]
    model = prepare_qat(_net(), "w4a4-lsq")
    _train(model, 5)
    clone = copy.deepcopy(model)
    resumed = prepare_qat(_net(7), "w4a4-lsq")
    resumed(x)  # initialises its input ranges, as a first training batch does
    resumed.load_state_dict(model.state_dict())  # a training checkpoint: master weights and quantizer state
    model.eval(), clone.eval(), resumed.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(clone(x), expected) and torch.equal(resumed(x), expected)
    assert all(m.fake_quantized for m in clone.modules() if isinstance(m, QuantModule))


def test_dynamic_per_token_inputs_train_and_convert_to_the_dynamic_packed_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 12, generator=g) * torch.linspace(0.1, 4, 12)  # features of very different scales
    y = (x[:, 0] * 10 > x[:, 11] / 4).long() + 2 * (x[:, 5] > 0).long()
    prepare_qat(model, "w4a8-dyn-lsq")
    assert model[0].act_dynamic and model[0]._modules["input_quantizer"] is None
    with pytest.raises(UnsupportedError, match="PACT"):
        prepare_qat(nn.Sequential(nn.Linear(4, 4)), "w4a8-dyn-pact")
    losses = _train(model, 40, (x, y))
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        fake = model(x)
        # per token: a token's output does not depend on the rest of the batch, however large the others are
        loud = torch.cat([x[:1], x[1:] * 1000])
        torch.testing.assert_close(model(loud)[:1], fake[:1], rtol=1e-5, atol=1e-5)
        convert(model)
        assert model[0].act_dynamic and not model[0].fake_quantized
        assert torch.equal(model(x), fake)


def test_hooks_and_every_name_of_a_layer_follow_it_into_the_fake_quantized_state() -> None:
    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _net()
            self.head = self.body[5]  # one layer under two names

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)  # type: ignore[no-any-return]

    model = Aliased()
    seen: list[int] = []
    handle = model.head.register_forward_hook(lambda _m, _args, out: seen.append(out.shape[0]))
    prepare_qat(model, "w4a8")
    assert model.head is model.body[5] and model.head.fake_quantized
    model(_data(8)[0])
    assert seen == [8]  # the hook registered on the float layer still runs
    handle.remove()
    model(_data(8)[0])
    assert seen == [8]
