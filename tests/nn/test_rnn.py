"""Packed LSTM and GRU: equal to the float module on the dequantized weights, for every option torch offers."""

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import quanta
from quanta.errors import InvalidTensorError
from quanta.nn.gru import QuantGRU
from quanta.nn.lstm import QuantLSTM
from quanta.nn.rnn import QuantRNNBase, flat_weight_names
from quanta.primitives.metrics import sqnr_db

torch_ao = pytest.importorskip("torch.ao.quantization")

CONFIGS: list[tuple[type[nn.RNNBase], dict[str, Any]]] = [
    (nn.LSTM, {}),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}),
    (nn.LSTM, {"batch_first": True, "proj_size": 8}),
    (nn.LSTM, {"num_layers": 2, "proj_size": 8, "bidirectional": True, "bias": False}),
    (nn.GRU, {}),
    (nn.GRU, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (nn.GRU, {"bias": False, "dropout": 0.5, "num_layers": 2}),
]
IDS = [f"{t.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for t, kw in CONFIGS]


def _rnn(rnn_type: type[nn.RNNBase], **options: Any) -> nn.RNNBase:
    torch.manual_seed(0)
    return rnn_type(12, 16, **options).eval()


def _dequantized_twin(packed: QuantRNNBase, float_module: nn.RNNBase) -> nn.RNNBase:
    """Independent reference: the float module with each weight replaced by its dequantized QTensor."""
    # Frozen like the packed module's weights: torch's CPU LSTM picks a different (equally valid) kernel when
    # weights require grad, whose results differ in the last bit.
    ref = copy.deepcopy(float_module).requires_grad_(False)
    with torch.no_grad():
        for name, qt in packed.qweights.items():
            getattr(ref, name).copy_(qt.dequantize())
    return ref


def _states(rnn: nn.RNNBase, batch: int) -> Any:
    g = torch.Generator().manual_seed(5)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    h = torch.randn(layers, batch, rnn.proj_size or rnn.hidden_size, generator=g)
    if isinstance(rnn, nn.LSTM):
        return h, torch.randn(layers, batch, rnn.hidden_size, generator=g)
    return h


def _assert_same(out: Any, expected: Any) -> None:
    if isinstance(out, tuple):
        for a, b in zip(out, expected, strict=True):
            _assert_same(a, b)
    else:
        assert torch.equal(out, expected)


@pytest.mark.parametrize(("rnn_type", "options"), CONFIGS, ids=IDS)
def test_flat_weight_order_is_torch_s(rnn_type: type[nn.RNNBase], options: dict[str, Any]) -> None:
    rnn = _rnn(rnn_type, **options)
    assert flat_weight_names(rnn) == rnn._flat_weights_names


@pytest.mark.parametrize(("rnn_type", "options"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("preset", ["w8a16", "w4a16-g4"])
def test_equals_float_module_on_dequantized_weights(
    rnn_type: type[nn.RNNBase], options: dict[str, Any], preset: str
) -> None:
    float_rnn = _rnn(rnn_type, **options)
    model = nn.Sequential(copy.deepcopy(float_rnn))
    quanta.quantize(model, preset)
    packed = model[0]
    assert isinstance(packed, QuantLSTM if rnn_type is nn.LSTM else QuantGRU)
    weights = [n for n, _ in float_rnn.named_parameters() if n.startswith("weight")]
    assert sorted(packed.qweights) == sorted(weights)  # every matrix packed; the float weights are gone
    assert not any(n.startswith("weight") for n, _ in packed.named_parameters())
    ref = _dequantized_twin(packed, float_rnn)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 12, generator=g)  # (batch, seq) with batch_first, else (seq, batch)
    batch = 3 if float_rnn.batch_first else 7
    _assert_same(packed(x), ref(x))
    _assert_same(packed(x, _states(float_rnn, batch)), ref(x, _states(float_rnn, batch)))
    unbatched = x[0]  # (seq, features)
    _assert_same(packed(unbatched), ref(unbatched))
    h1 = _states(float_rnn, 1)
    h1 = tuple(h[:, 0] for h in h1) if isinstance(h1, tuple) else h1[:, 0]
    _assert_same(packed(unbatched, h1), ref(unbatched, h1))


@pytest.mark.parametrize(("rnn_type", "options"), [CONFIGS[1], CONFIGS[5]], ids=[IDS[1], IDS[5]])
def test_packed_sequences(rnn_type: type[nn.RNNBase], options: dict[str, Any]) -> None:
    float_rnn = _rnn(rnn_type, **options)
    packed = quanta.quantize(nn.Sequential(copy.deepcopy(float_rnn)), "w8a16")[0]
    ref = _dequantized_twin(packed, float_rnn)
    x = torch.randn(4, 6, 12) if float_rnn.batch_first else torch.randn(6, 4, 12)
    lengths = torch.tensor([3, 6, 1, 4])  # unsorted: torch sorts them and the states follow
    seq = pack_padded_sequence(x, lengths, batch_first=float_rnn.batch_first, enforce_sorted=False)
    out, state = packed(seq, _states(float_rnn, 4))
    expected, expected_state = ref(seq, _states(float_rnn, 4))
    _assert_same(state, expected_state)
    padded, _ = pad_packed_sequence(out, batch_first=float_rnn.batch_first)
    assert torch.equal(padded, pad_packed_sequence(expected, batch_first=float_rnn.batch_first)[0])


def test_dropout_between_layers_follows_training_mode() -> None:
    float_rnn = _rnn(nn.GRU, num_layers=2, dropout=0.5)
    packed = quanta.quantize(nn.Sequential(copy.deepcopy(float_rnn)), "w8a16")[0]
    ref = _dequantized_twin(packed, float_rnn)
    x = torch.randn(5, 2, 12)
    packed.train()
    ref.train()
    torch.manual_seed(7)
    out = packed(x)[0]
    torch.manual_seed(7)
    assert torch.equal(out, ref(x)[0])  # same dropout mask from the same seed
    assert not torch.equal(out, packed.eval()(x)[0])  # and eval mode drops nothing


class SpeechNet(nn.Module):
    """A keyword-spotting-like model: 2-layer LSTM over 40-d filterbank frames, a linear head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (batch, frames, 64)
        return self.head(out[:, -1])


def _speech() -> SpeechNet:
    torch.manual_seed(0)
    return SpeechNet().eval()


def _frames(seed: int = 2) -> torch.Tensor:
    # Smooth, correlated frames (a random walk) rather than white noise, like log-mel features.
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(0.3 * torch.randn(4, 50, 40, generator=g), dim=1)


# Output SQNR floors: ~6 dB per weight bit, less 8 dB for the error growth through 100 recurrent steps and the
# head. Measured: w8a16 ~48 dB, w4a16-g32 ~23 dB.
@pytest.mark.parametrize(("preset", "bits", "floor_db"), [("w8a16", 8, 40.0), ("w4a16-g32", 4, 16.0)])
def test_speech_model_presets(preset: str, bits: int, floor_db: float, tmp_path: Path) -> None:
    float_model = _speech()
    model = quanta.quantize(_speech(), preset)
    assert isinstance(model.lstm, QuantLSTM)
    x = _frames()
    ref_lstm = _dequantized_twin(model.lstm, float_model.lstm)
    ref_head = copy.deepcopy(float_model.head)
    with torch.no_grad():
        ref_head.weight.copy_(model.head.qweight.dequantize())
    y = model(x)
    assert torch.equal(y, ref_head(ref_lstm(x)[0][:, -1]))
    assert sqnr_db(float_model(x).detach(), y.detach()) > floor_db
    # Size: codes at `bits` per weight, plus each weight's scales/zeros, plus float biases: nothing else.
    weights = [p for n, p in float_model.named_parameters() if n.endswith("weight") or "weight_" in n]
    biases = [p for n, p in float_model.named_parameters() if "bias" in n]
    qtensors = [*model.lstm.qweights.values(), model.head.qweight]
    params = sum(t.numel() * t.element_size() for qt in qtensors for t in qt.params.values())
    assert quanta.model_nbytes(model) == sum(w.numel() for w in weights) * bits // 8 + params + 4 * sum(
        b.numel() for b in biases
    )
    if bits == 8:  # per output row: one fp32 scale
        assert params == 4 * sum(w.shape[0] for w in weights)
    # No float copy of any weight left behind: float bytes are biases and stored parameters only.
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    float_params = sum(
        t.numel() * t.element_size() for qt in qtensors for t in qt.params.values() if t.is_floating_point()
    )
    assert float_bytes == float_params + 4 * sum(b.numel() for b in biases)
    # Saved and reloaded into a skeleton built on the meta device: bit-identical.
    path = quanta.save(model, tmp_path / "speech")
    with torch.device("meta"):
        skeleton = SpeechNet()
    loaded = quanta.load(path, skeleton)
    assert isinstance(loaded.lstm, QuantLSTM)
    assert torch.equal(loaded(x), y)


def test_static_int8_inputs_match_torch_observer() -> None:
    calib = [_frames(seed) for seed in range(3)]
    observer = torch_ao.MinMaxObserver(
        dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127
    )
    for x in calib:
        observer(x)
    float_model = _speech()
    model = quanta.quantize(_speech(), "w8a8", calib=calib)
    scale, zero = observer.calculate_qparams()
    assert float(model.lstm.act_scale) == pytest.approx(float(scale), rel=1e-6)
    assert int(model.lstm.act_zero) == int(zero)
    x = _frames(9)
    xq = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), -128, 127)
    ref = _dequantized_twin(model.lstm, float_model.lstm)
    torch.testing.assert_close(model.lstm(x)[0], ref(xq)[0], rtol=0, atol=1e-6)


def test_dynamic_per_token_inputs() -> None:
    float_rnn = _rnn(nn.GRU, batch_first=True)
    packed = quanta.quantize(nn.Sequential(copy.deepcopy(float_rnn)), "w8a8-dyn")[0]
    x = torch.randn(2, 5, 12)
    # One symmetric scale per frame, the smallest that keeps the frame on codes -128..127.
    scale = torch.maximum(-x.amin(-1, keepdim=True) / 128, x.amax(-1, keepdim=True) / 127)
    xq = torch.clamp(torch.round(x / scale), -128, 127) * scale
    ref = _dequantized_twin(packed, float_rnn)
    torch.testing.assert_close(packed(x)[0], ref(xq)[0], rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_input_and_bad_shapes_are_named() -> None:
    packed = quanta.quantize(nn.Sequential(_rnn(nn.LSTM)), "w8a16")[0]
    x = torch.randn(5, 2, 12, requires_grad=True)
    packed(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(InvalidTensorError, match="input_size=12"):
        packed(torch.randn(5, 2, 13))
    with pytest.raises(InvalidTensorError, match="expects a"):
        packed(torch.randn(12))
    with pytest.raises(InvalidTensorError, match=r"expected \(1, 2, 16\)"):
        packed(torch.randn(5, 2, 12), (torch.zeros(1, 3, 16), torch.zeros(1, 3, 16)))
    with pytest.raises(InvalidTensorError, match="takes 2 initial state"):
        packed(torch.randn(5, 2, 12), (torch.zeros(1, 2, 16),))
