"""quanta.quantize on whole models: swaps, sizes, outputs, validation before mutation."""

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import NonFiniteError, QuantaError, SchemeError, UnsupportedError
from quanta.nn.conv import QuantConv2d
from quanta.nn.linear import QuantLinear


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _reference(model: nn.Module, scheme: str, keep: set[int] = frozenset()) -> nn.Module:  # type: ignore[assignment]
    """Independent reference: a float copy whose weights are replaced by dequantize(quantize_tensor(w))."""
    ref = copy.deepcopy(model)
    for i, m in enumerate(ref):  # type: ignore[arg-type]
        if isinstance(m, (nn.Conv2d, nn.Linear)) and i not in keep:
            with torch.no_grad():
                m.weight.copy_(quanta.quantize_tensor(m.weight, scheme).dequantize())
    return ref


@pytest.mark.parametrize(("preset", "scheme"), [("w8a16", "int8:ch"), ("w4a16-g32", "int4:g32:asym:sf16")])
def test_quantized_model_equals_float_model_with_dequantized_weights(preset: str, scheme: str) -> None:
    model = _cnn()
    x = torch.randn(4, 1, 8, 8)
    expected = _reference(model, scheme)(x)
    out = quanta.quantize(model, preset)
    assert out is model
    assert isinstance(model[0], QuantConv2d) and isinstance(model[5], QuantLinear)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


def test_model_gets_smaller_by_the_scheme_s_bits() -> None:
    model = _cnn()
    weights = sum(m.weight.numel() for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))
    biases = sum(m.bias.numel() for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))
    before = quanta.model_nbytes(model)
    assert before == 4 * (weights + biases)
    quanta.quantize(model, "w8a16")
    scales = sum(m.out_features for m in model if isinstance(m, QuantLinear)) + sum(
        m.out_channels for m in model if isinstance(m, QuantConv2d)
    )
    assert quanta.model_nbytes(model) == weights + 4 * scales + 4 * biases  # 1 byte per weight + fp32 scales
    # No float copy of any weight: the only float tensors left are biases and scales.
    floats = sum(t.numel() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    assert floats == scales + biases


def test_binary_presets_keep_first_and_last_layers_in_float() -> None:
    model = _cnn()
    quanta.quantize(model, "ternary")
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[7], nn.Linear)
    assert isinstance(model[2], QuantConv2d) and isinstance(model[5], QuantLinear)


def test_tied_weights_stay_tied() -> None:
    emb = nn.Embedding(20, 8)
    head = nn.Linear(8, 20, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    recipe = quanta.Recipe(rules=(quanta.Rule(weight=quanta.QScheme.parse("int8:ch")),))
    quanta.quantize(model, recipe)
    assert model["emb"].weight_codes is model["head"].weight_codes
    assert quanta.model_nbytes(model) == 20 * 8 + 20 * 4
    ids = torch.tensor([3, 7])
    torch.testing.assert_close(model["emb"](ids), model["head"].dequantized_weight(torch.float32)[ids])


def test_state_dict_and_deepcopy() -> None:
    model = quanta.quantize(_cnn(), "w4a16-g32")
    twin = quanta.quantize(_cnn(), "w4a16-g32")
    x = torch.randn(2, 1, 8, 8)
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))
    x.requires_grad_()
    model(x).sum().backward()  # gradients reach the input through the reference path
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_validation_happens_before_any_module_changes() -> None:
    model = _cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedError, match=r"not available; available: .*rtn"):
        quanta.quantize(model, "w4a16-g32-nosuchmethod")
    with pytest.raises(QuantaError, match="calibration data"):
        quanta.quantize(model, "w8a8")
    with pytest.raises(QuantaError, match="calibration data"):
        quanta.quantize(model, "fp8")
    with pytest.raises(SchemeError, match="unknown preset"):
        quanta.quantize(model, "w4x16")
    bad = quanta.Recipe(rules=(quanta.Rule(pattern="encoder.*", weight=quanta.QScheme.parse("int8")),))
    with pytest.raises(QuantaError, match="matches no module"):
        quanta.quantize(model, bad)
    with torch.no_grad():
        model[5].weight[0, 0] = float("nan")
    state["5.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="the weight of 5"):
        quanta.quantize(model, "w8a16")
    assert isinstance(model[0], nn.Conv2d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) or (torch.isnan(v).any() and torch.equal(v.isnan(), state[k].isnan()))


def test_unsupported_leaf_modules_are_reported(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 4))  # (LSTM, the old example, now has a twin)
    with pytest.warns(UserWarning, match="Bilinear"):
        quanta.quantize(model, "w8a16")
    assert isinstance(model[0], QuantLinear) and isinstance(model[1], nn.Bilinear)
    config = json.loads((quanta.save(model, tmp_path / "m") / "quanta.json").read_text())
    assert config["left_in_float"] == ["1 (Bilinear)"]


def test_activation_only_recipes_are_refused_and_progress_bar_runs() -> None:
    with pytest.raises(UnsupportedError, match="float weights"):
        quanta.quantize(_cnn(), "w16a8-dyn")
    model = quanta.quantize(_cnn(), "w8a16", progress=True)
    assert isinstance(model[5], QuantLinear)
