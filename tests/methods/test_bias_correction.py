import copy
import statistics

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import QuantaError
from quanta.methods import correct_bias, layer_output_errors
from tests.methods.conftest import W4A8_TENSOR, needs_data, weight_layers


def _ratio(model: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor]) -> float:
    """Mean layer-output MSE (held out) of per-tensor W4A8 with bias correction over plain RTN's."""
    names = weight_layers(model)
    rtn = quanta.quantize(copy.deepcopy(model), W4A8_TENSOR, calib=calib)
    corrected = copy.deepcopy(rtn)
    correct_bias(corrected, {n: model.get_submodule(n) for n in names}, calib)
    before = statistics.mean(layer_output_errors(model, rtn, held, names).values())
    after = statistics.mean(layer_output_errors(model, corrected, held, names).values())
    return after / before


def test_correction_is_the_mean_output_error_in_closed_form() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(32, 8)
    x = torch.randn(256, 32) + 1.0  # a non-zero mean input: the error has a mean
    model = quanta.quantize(nn.Sequential(copy.deepcopy(layer)), "w3a16")
    w_q = model[0].dequantized_weight(torch.float32)
    bias_before = model[0].bias.clone()
    got = correct_bias(model, {"0": layer}, list(x.split(64)))["0"]
    expected = (w_q - layer.weight.detach()) @ x.mean(0)  # E[(W_q - W) x]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model[0].bias, bias_before - expected, rtol=1e-4, atol=1e-6)


def test_a_layer_without_bias_gets_one_and_the_mean_error_vanishes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 4, 3, bias=False)).eval()
    x = torch.randn(64, 3, 8, 8) + 0.5
    quantized = quanta.quantize(copy.deepcopy(model), "w3a16")
    correct_bias(quantized, {"0": model[0], "2": model[2]}, [x])
    assert quantized[2].bias is not None
    # On the inputs it sees in the quantized model, the last layer's mean output error is now zero.
    h = quantized[1](quantized[0](x))
    error = (quantized[2](h) - model[2](h)).mean((0, 2, 3))
    torch.testing.assert_close(error, torch.zeros(4), rtol=0, atol=1e-5)


def test_empty_calibration_is_refused() -> None:
    model = quanta.quantize(nn.Sequential(nn.Linear(4, 4)), "w4a16")
    with pytest.raises(QuantaError, match="calibration"):
        correct_bias(model, {"0": nn.Linear(4, 4)}, [])


@needs_data
def test_bias_correction_reduces_lenet5_error(lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    assert _ratio(*lenet) <= 0.9


@needs_data
def test_bias_correction_reduces_resnet20_error(
    resnet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]],
) -> None:
    assert _ratio(*resnet) <= 0.9
