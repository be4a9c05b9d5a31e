import copy
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.errors import QuantaError, UnsupportedError
from quanta.io import load_tensors, save_tensors
from quanta.kernels.int4_layout import torch_layout
from quanta.methods import layer_hessians, layer_output_errors
from quanta.methods.gptq import gptq_weight
from quanta.methods.layers import weight_matrix
from quanta.nn.linear import QuantLinear
from quanta.scheme import QScheme
from quanta.tensor import QTensor
from tests.methods.conftest import needs_data, swap_weights, weight_layers

# The settings first (4-bit g32, 3-bit g16), then the other granularities and modes.
SCHEMES = ["int4:g32:asym:sf16", "int3:g16:asym:sf16", "int4:g32", "int4:ch", "int4:tensor:fmin", "uint8:ch:asym"]


def _correlated(n: int, k: int, seed: int) -> torch.Tensor:
    """``n`` input vectors of size ``k`` with strongly correlated features (a random mixing of white noise)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    return torch.randn(n, k, generator=g) @ mix + 0.5 * torch.randn(n, 1, generator=g)


def _layer() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A Linear layer and E[x x^T] of correlated inputs: calibration and held-out halves."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 32)
    x = _correlated(1024, 96, seed=1)
    h_cal = layer_hessians(nn.Sequential(lin), ["0"], [x[:512]])["0"]
    h_held = layer_hessians(nn.Sequential(lin), ["0"], [x[512:]])["0"]
    return lin, h_cal, h_held


def _local_error(layer: nn.Module, qt: QTensor, hessian: torch.Tensor) -> float:
    delta = qt.dequantize().reshape(qt.shape[0], -1) - weight_matrix(layer).detach()
    return float((delta @ hessian * delta).sum())  # sum over outputs of E||(W_q - W) x||^2


@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gptq_keeps_the_scheme_and_lowers_the_held_out_output_error(scheme: str, desc_act: bool) -> None:
    lin, h_cal, h_held = _layer()
    rtn = quantize_tensor(lin.weight.detach(), scheme)
    qt = gptq_weight(lin, QScheme.parse(scheme), h_cal, desc_act=desc_act)
    assert str(qt.scheme) == str(rtn.scheme) and qt.codes.shape == rtn.codes.shape
    for name, value in rtn.params.items():  # the same parameters, shapes and storage dtypes
        assert qt.params[name].shape == value.shape and qt.params[name].dtype == value.dtype
    qmin, qmax = qt.scheme.fmt.qrange(qt.scheme)  # type: ignore[attr-defined]
    codes = qt.unpacked_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert _local_error(lin, qt, h_held) <= 0.9 * _local_error(lin, rtn, h_held)


@pytest.mark.parametrize("scheme", [*SCHEMES, "int4:g128:asym:sbf16", "int2:g8", "int4:g40:asym"])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_with_an_identity_hessian_is_rtn(scheme: str, desc_act: bool) -> None:
    """Independent reference: through a diagonal Hessian the error feedback is zero, so every group is fitted on
    the float weights and every weight rounds to nearest: RTN's codes and parameters, bit for bit."""
    torch.manual_seed(0)
    layer = nn.Linear(100, 24)  # 100 columns: ragged last groups for g16/g32/g40 and one group for g128
    qt = gptq_weight(layer, QScheme.parse(scheme), torch.eye(100), desc_act=desc_act)
    rtn = quantize_tensor(layer.weight.detach(), scheme)
    assert torch.equal(qt.codes, rtn.codes)
    assert qt.params.keys() == rtn.params.keys()
    for name, value in rtn.params.items():
        assert torch.equal(qt.params[name], value)


def test_gptq_on_a_conv_and_with_dead_or_singular_inputs() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(16, 4, 8, 8)
    x[:, 2] = 0  # a dead input channel: 9 columns of H are zero
    hessian = layer_hessians(nn.Sequential(conv), ["0"], [x])["0"]
    scheme = QScheme.parse("int4:g16:asym:sf16")
    qt = gptq_weight(conv, scheme, hessian)
    assert qt.shape == conv.weight.shape and bool(torch.isfinite(qt.dequantize()).all())
    rtn = quantize_tensor(conv.weight.detach(), scheme)
    assert _local_error(conv, qt, hessian) < _local_error(conv, rtn, hessian)
    rank_one = torch.ones(36, 36)  # singular: damping alone makes it factorable
    assert bool(torch.isfinite(gptq_weight(conv, scheme, rank_one).dequantize()).all())


def test_gptq_is_deterministic_and_round_trips_through_safetensors(tmp_path: Path) -> None:
    lin, h_cal, _ = _layer()
    first = gptq_weight(lin, QScheme.parse("int3:g16:asym:sf16"), h_cal)
    again = gptq_weight(lin, QScheme.parse("int3:g16:asym:sf16"), h_cal)
    assert torch.equal(first.codes, again.codes)
    save_tensors(tmp_path / "w.safetensors", first.to_dict("w."))
    loaded = QTensor.from_dict(load_tensors(tmp_path / "w.safetensors"), "w.")
    assert torch.equal(loaded.codes, first.codes)
    for name, value in first.params.items():
        assert torch.equal(loaded.params[name], value)


def test_gptq_refuses_non_integer_grids_and_wrong_statistics() -> None:
    lin, h_cal, _ = _layer()
    with pytest.raises(UnsupportedError, match="integer"):
        gptq_weight(lin, QScheme.parse("nf4:g32"), h_cal)
    with pytest.raises(UnsupportedError, match="hessian"):
        gptq_weight(lin, QScheme.parse("int4:ch"), torch.eye(5))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))


def test_quantize_with_gptq_needs_calibration_data() -> None:
    with pytest.raises(QuantaError, match="calib"):
        quanta.quantize(_mlp(), "w4a16-g128-gptq")


@pytest.mark.parametrize("preset", ["w4a16-g128-gptq", "w3a16-g16-gptq", "w4a16-g32-gptq", "w8a8-gptq"])
def test_quantize_presets_with_gptq_save_and_load_bit_identically(preset: str, tmp_path: Path) -> None:
    calib = [_correlated(64, 256, seed=s) for s in range(4)]
    model = quanta.quantize(_mlp(), preset, calib)
    rtn = quanta.quantize(_mlp(), preset.removesuffix("-gptq"), calib)
    assert isinstance(model[0], QuantLinear) and isinstance(model[2], QuantLinear)
    # The same kernels as RTN's: the codes are in the scheme's own layout.
    assert [model[i].kernel for i in (0, 2)] == [rtn[i].kernel for i in (0, 2)]
    if preset == "w4a16-g128-gptq" and torch_layout() is not None:
        assert model[0].kernel == "int4_weight_only"  # 64 x 256: the int4 kernel's shape; 10 x 64 is not
    loaded = quanta.load(quanta.save(model, tmp_path / "q"), _mlp())
    for i in (0, 2):
        saved, back = model[i].qweight, loaded[i].qweight
        assert torch.equal(saved.codes, back.codes)
        for name, value in saved.params.items():
            assert torch.equal(back.params[name], value)
    x = _correlated(8, 256, seed=9)
    assert torch.equal(loaded(x), model(x))


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def _ratio(model: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor], scheme: str) -> float:
    """Mean layer-output MSE (held out, end to end) with GPTQ weights over RTN's."""
    names = weight_layers(model)
    hessians = layer_hessians(model, names, calib)
    rtn = swap_weights(model, {n: quantize_tensor(_weight(model.get_submodule(n)), scheme) for n in names})
    found: dict[str, object] = {
        n: gptq_weight(model.get_submodule(n), QScheme.parse(scheme), hessians[n]) for n in names
    }
    gptq = swap_weights(model, found)
    before = statistics.mean(layer_output_errors(model, rtn, held, names).values())
    after = statistics.mean(layer_output_errors(model, gptq, held, names).values())
    return after / before


@pytest.mark.parametrize("scheme", ["int4:g32:asym:sf16", "int3:g16:asym:sf16"])
def test_gptq_reduces_the_error_of_a_small_model(scheme: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 32))
    data = _correlated(2048, 128, seed=3)
    assert _ratio(model, list(data[:1024].split(256)), list(data[1024:].split(256)), scheme) <= 0.9


@needs_data
@pytest.mark.parametrize("scheme", ["int4:g32:asym:sf16", "int3:g16:asym:sf16"])
def test_gptq_reduces_lenet5_error(
    lenet: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]], scheme: str
) -> None:
    model, calib, held = lenet
    assert _ratio(copy.deepcopy(model), calib, held, scheme) <= 0.9


def test_act_order_preset_is_gptq_with_desc_act() -> None:
    calib = [_correlated(64, 256, seed=s) for s in range(4)]
    model = quanta.quantize(_mlp(), "w4a16-g32-gptqact", calib)
    float_model = _mlp()
    h = layer_hessians(float_model, ["0"], calib)["0"]
    expected = gptq_weight(float_model[0], QScheme.parse("int4:g32:asym:sf16"), h, grid_search=True, desc_act=True)
    plain = gptq_weight(float_model[0], QScheme.parse("int4:g32:asym:sf16"), h, grid_search=True)
    assert str(model[0].qweight.scheme) == str(expected.scheme)
    assert torch.equal(model[0].qweight.codes, expected.codes)
    assert not torch.equal(expected.codes, plain.codes)  # the order changed the rounding
