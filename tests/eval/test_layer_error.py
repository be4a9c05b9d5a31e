"""Per-layer SQNR/MSE against hand computation: the float and quantized forward passes written out by hand."""

import copy
import math

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import QuantaError
from quanta.eval import layer_errors


def _sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return 10 * math.log10(float((ref**2).sum()) / float(((ref - got) ** 2).sum()))


@pytest.fixture
def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    return net, quanta.quantize(copy.deepcopy(net), "w4a16")  # int4 per channel: a visible error


def test_matches_the_forward_pass_written_by_hand(pair: tuple[nn.Module, nn.Module]) -> None:
    net, q = pair
    batches = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    x = torch.cat(batches)
    w1, b1, w2, b2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach(), net[2].bias.detach()
    w1q, w2q = q[0].dequantized_weight(torch.float32), q[2].dequantized_weight(torch.float32)
    y1, y1q = x @ w1.T + b1, x @ w1q.T + b1
    y2, y2q = torch.relu(y1) @ w2.T + b2, torch.relu(y1q) @ w2q.T + b2  # layer 2 sees the quantized layer 1 output

    got = {e.name: e for e in layer_errors(net, q, batches)}
    assert list(got) == ["0", "2"]
    for name, ref, out in (("0", y1, y1q), ("2", y2, y2q)):
        assert got[name].output_sqnr_db == pytest.approx(_sqnr(ref, out), abs=1e-3)
        assert got[name].output_mse == pytest.approx(float(((ref - out).double() ** 2).mean()), rel=1e-4)
        assert got[name].kind == "QuantLinear"
    assert got["0"].weight_sqnr_db == pytest.approx(_sqnr(w1, w1q), abs=1e-9)
    assert got["2"].weight_sqnr_db == pytest.approx(_sqnr(w2, w2q), abs=1e-9)
    # int4 per channel: about 6 dB per bit, so the weight SQNR lies well between 2-bit and 8-bit figures.
    assert 12 < got["0"].weight_sqnr_db < 40


def test_batching_does_not_change_the_result(pair: tuple[nn.Module, nn.Module]) -> None:
    net, q = pair
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(5))
    whole = layer_errors(net, q, [x])
    split = layer_errors(net, q, x.split(5))
    # Batches of another size may take other GEMM kernels: equal up to float32 rounding of the outputs.
    for a, b in zip(whole, split, strict=True):
        assert a.output_sqnr_db == pytest.approx(b.output_sqnr_db, abs=1e-4)
        assert a.output_mse == pytest.approx(b.output_mse, rel=1e-5)


def test_identical_models_have_no_error_and_unpacked_layers_no_weight_sqnr() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    (err,) = layer_errors(net, copy.deepcopy(net), [torch.randn(3, 4)], names=["0"])
    assert err.output_sqnr_db == math.inf and err.output_mse == 0.0 and err.weight_sqnr_db is None


def test_a_module_called_twice_counts_both_calls() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    torch.manual_seed(1)
    net = Twice()
    q = quanta.quantize(copy.deepcopy(net), "w4a16")
    x = torch.randn(8, 4)
    w, b, wq = net.fc.weight.detach(), net.fc.bias.detach(), q.fc.dequantized_weight(torch.float32)
    h, hq = x @ w.T + b, x @ wq.T + b
    ref = torch.cat([h, torch.relu(h) @ w.T + b])
    out = torch.cat([hq, torch.relu(hq) @ wq.T + b])
    (err,) = layer_errors(net, q, [x])
    assert err.output_sqnr_db == pytest.approx(_sqnr(ref, out), abs=1e-3)


def test_bad_arguments_raise_quanta_errors(pair: tuple[nn.Module, nn.Module]) -> None:
    net, q = pair
    with pytest.raises(QuantaError, match="not in the float model"):
        layer_errors(net, q, [torch.randn(2, 6)], names=["missing"])
    with pytest.raises(QuantaError, match="empty"):
        layer_errors(net, q, [])
    with pytest.raises(QuantaError, match="no packed modules"):
        layer_errors(net, copy.deepcopy(net), [torch.randn(2, 6)])
    other = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(QuantaError, match="outputs"):
        layer_errors(other, q, [torch.randn(2, 6)])


def test_weight_sqnr_covers_every_packed_weight_of_an_lstm() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    torch.manual_seed(2)
    net = Tagger()
    q = quanta.quantize(copy.deepcopy(net), "w4a16")
    (err,) = layer_errors(net, q, [torch.randn(3, 5, 8)])
    names = sorted(q.rnn.qweights)
    assert len(names) == 4  # weight_ih/hh for both layers
    ref = torch.cat([getattr(net.rnn, n).detach().reshape(-1) for n in names])
    got = torch.cat([q.rnn.dequantized_weight(torch.float32, n).reshape(-1) for n in names])
    assert err.weight_sqnr_db == pytest.approx(_sqnr(ref, got), abs=1e-9)
    assert math.isfinite(err.output_sqnr_db) and err.output_mse > 0
