import copy
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.errors import UnsupportedError
from quanta.io import load_tensors, save_tensors
from quanta.methods import adaround_weight, layer_hessians, layer_output_errors
from quanta.methods.layers import weight_matrix
from quanta.scheme import QScheme
from quanta.tensor import QTensor
from tests.methods.conftest import needs_data, swap_weights, weight_layers

SCHEMES = ["int4:ch", "int4:g32:asym:sf16", "int3:g16:asym:sf16", "int4:tensor:fmin", "uint8:ch:asym", "int2:g8"]


def _layer() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A conv layer and E[x x^T] of correlated inputs (calibration and held-out halves)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    mix = torch.randn(4, 4)
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 4, 8, 8))
    h_cal = layer_hessians(nn.Sequential(conv), ["0"], [x[:32]])["0"]
    h_held = layer_hessians(nn.Sequential(conv), ["0"], [x[32:]])["0"]
    return conv, h_cal, h_held


def _local_error(layer: nn.Module, qt: QTensor, hessian: torch.Tensor) -> float:
    delta = qt.dequantize().reshape(qt.shape[0], -1) - weight_matrix(layer).detach()
    return float((delta @ hessian * delta).sum())  # sum over outputs of E||(W_q - W) x||^2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_adaround_keeps_the_rtn_grid_and_lowers_the_output_error(scheme: str) -> None:
    conv, h_cal, h_held = _layer()
    rtn = quantize_tensor(conv.weight.detach(), scheme)
    ada = adaround_weight(conv, QScheme.parse(scheme), h_cal, iters=300)
    assert str(ada.scheme) == str(rtn.scheme)
    for name, value in rtn.params.items():  # same scales / zero points / offsets, bit for bit
        assert torch.equal(ada.params[name], value)
    qmin, qmax = ada.scheme.fmt.qrange(ada.scheme)  # type: ignore[attr-defined]
    codes = ada.unpacked_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    # Each code rounds up or down: at most one code away from RTN's.
    assert int((codes - rtn.unpacked_codes()).abs().max()) <= 1
    assert _local_error(conv, ada, h_held) <= 0.9 * _local_error(conv, rtn, h_held)


def test_adaround_is_deterministic_and_round_trips_through_safetensors(tmp_path: Path) -> None:
    conv, h_cal, _ = _layer()
    first = adaround_weight(conv, QScheme.parse("int4:g32:asym:sf16"), h_cal, iters=100)
    again = adaround_weight(conv, QScheme.parse("int4:g32:asym:sf16"), h_cal, iters=100)
    assert torch.equal(first.codes, again.codes)
    save_tensors(tmp_path / "w.safetensors", first.to_dict("w."))
    loaded = QTensor.from_dict(load_tensors(tmp_path / "w.safetensors"), "w.")
    assert torch.equal(loaded.dequantize(), first.dequantize())


def test_adaround_refuses_non_integer_grids_and_wrong_statistics() -> None:
    conv, h_cal, _ = _layer()
    with pytest.raises(UnsupportedError, match="integer"):
        adaround_weight(conv, QScheme.parse("nf4:g32"), h_cal)
    with pytest.raises(UnsupportedError, match="hessian"):
        adaround_weight(conv, QScheme.parse("int4:ch"), torch.eye(5))


def _ratio(model: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor], names: list[str]) -> float:
    """Mean layer-output MSE (held out, end to end) with AdaRound weights over RTN's, at int4 g32."""
    scheme = QScheme.parse("int4:g32:asym:sf16")
    hessians = layer_hessians(model, names, calib)
    rtn = swap_weights(model, {n: quantize_tensor(model.get_submodule(n).weight.detach(), scheme) for n in names})
    learned = {n: adaround_weight(model.get_submodule(n), scheme, hessians[n], iters=200) for n in names}
    ada = swap_weights(model, learned)
    before = statistics.mean(layer_output_errors(model, rtn, held, names).values())
    after = statistics.mean(layer_output_errors(model, ada, held, names).values())
    return after / before


@needs_data
def test_adaround_reduces_lenet5_error(lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    model, calib, held = lenet
    assert _ratio(model, calib, held, weight_layers(model)) <= 0.9


@needs_data
def test_adaround_reduces_resnet20_error(resnet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]) -> None:
    model, calib, held = resnet
    names = weight_layers(model)[:7]  # the stem and the first stage keep the test to a few seconds
    assert _ratio(copy.deepcopy(model), calib, held, names) <= 0.9
