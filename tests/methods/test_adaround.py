import copy
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quanta.codec import quantize_tensor
from quanta.errors import UnsupportedError
from quanta.io import load_tensors, save_tensors
from quanta.methods import adaround_weight, layer_hessians, layer_output_errors
from quanta.methods.layers import input_vector_count, input_vectors, weight_matrix
from quanta.primitives.packing import pack
from quanta.scheme import QScheme
from quanta.tensor import QTensor
from tests.methods.conftest import needs_data, swap_weights, weight_layers

SCHEMES = ["int4:ch", "int4:g32:asym:sf16", "int3:g16:asym:sf16", "int4:tensor:fmin", "uint8:ch:asym", "int2:g8"]


def _layer() -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
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


def _with_codes(rtn: QTensor, codes: torch.Tensor) -> QTensor:
    """RTN's grid (scheme, scales, zero points) with other integer codes, shaped as RTN's unpacked codes."""
    fmt = rtn.scheme.fmt
    packed = pack(codes.reshape(rtn.unpacked_codes().shape).to(torch.int32), rtn.scheme.bits, fmt.signed_codes)
    return QTensor(packed, rtn.params, rtn.scheme, rtn.shape)


def _autograd_adaround(layer: nn.Conv2d, scheme: QScheme, hessian: torch.Tensor, iters: int) -> QTensor:
    """Reference: the paper's loss through autograd and torch.optim.Adam on the RTN grid, as written in the paper."""
    w = weight_matrix(layer).detach()
    rtn = quantize_tensor(layer.weight.detach(), scheme)
    qmin, qmax = scheme.fmt.qrange(scheme)  # type: ignore[attr-defined]
    level = rtn.unpacked_codes()
    b = _with_codes(rtn, torch.zeros_like(level)).dequantize().reshape(w.shape)  # w = a * q + b on the grid
    a = _with_codes(rtn, torch.ones_like(level)).dequantize().reshape(w.shape) - b
    floor = torch.floor((w - b) / a)
    rest = ((w - b) / a - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log(1.2 / (rest + 0.1) - 1)).requires_grad_(True)  # h(V0) = rest

    def h(v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(v) * 1.2 - 0.1, 0, 1)

    optimizer = torch.optim.Adam([v], lr=1e-2)
    start = int(0.2 * iters)
    for step in range(iters):
        optimizer.zero_grad()
        delta = a * torch.clamp(floor + h(v), qmin, qmax) + b - w
        loss = (delta @ hessian * delta).sum() / w.shape[0]
        if step >= start:
            exponent = 20 + (2 - 20) * (step - start) / (iters - start)
            loss = loss + 0.01 * (1 - (2 * h(v) - 1).abs().pow(exponent)).sum()
        loss.backward()
        optimizer.step()
    return _with_codes(rtn, torch.clamp(floor + (h(v) >= 0.5).float(), qmin, qmax).detach())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_adaround_learns_what_the_autograd_reference_learns(scheme: str) -> None:
    """The closed-form gradient and in-place Adam follow autograd + torch.optim.Adam on the paper's loss: the same
    codes but for at most 1% of weights (a soft value that ends within rounding of 0.5), no worse held out."""
    conv, h_cal, h_held = _layer()
    ada = adaround_weight(conv, QScheme.parse(scheme), h_cal, iters=300)
    ref = _autograd_adaround(conv, QScheme.parse(scheme), h_cal, iters=300)
    assert int((ada.unpacked_codes() != ref.unpacked_codes()).sum()) <= 0.01 * ref.unpacked_codes().numel()
    assert _local_error(conv, ada, h_held) <= 1.01 * _local_error(conv, ref, h_held)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Conv2d(3, 5, 3, padding=1), (4, 3, 9, 11)),
        (nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 3)), (4, 3, 9, 11)),
        (nn.Conv2d(16, 8, 5), (6, 16, 5, 5)),  # one output position per image
        (nn.Conv1d(4, 2, 5, stride=2, padding=3, dilation=2), (3, 4, 20)),
        (nn.Linear(7, 3), (2, 5, 7)),
    ],
)
def test_input_vectors_match_unfold_and_sampled_rows_match_all_rows(layer: nn.Module, shape: tuple[int, ...]) -> None:
    """The Hessian's rows: every output position's patch in F.unfold's layout, and a sample of positions builds
    exactly those rows of the full set (layer_hessians draws positions before building patches)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    full = input_vectors(layer, x)
    if isinstance(layer, nn.Linear):
        expected = x.reshape(-1, shape[-1])
    else:
        x4 = x.unsqueeze(2) if isinstance(layer, nn.Conv1d) else x
        pad = (0, *layer.padding) if isinstance(layer, nn.Conv1d) else layer.padding
        kernel = (1, *layer.kernel_size) if isinstance(layer, nn.Conv1d) else layer.kernel_size
        stride = (1, *layer.stride) if isinstance(layer, nn.Conv1d) else layer.stride
        dilation = (1, *layer.dilation) if isinstance(layer, nn.Conv1d) else layer.dilation
        cols = F.unfold(x4, kernel, dilation=dilation, padding=pad, stride=stride)  # type: ignore[arg-type]
        expected = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    assert torch.equal(full, expected)
    assert input_vector_count(layer, x) == full.shape[0]
    rows = torch.randperm(full.shape[0])[: full.shape[0] // 2 + 1]
    assert torch.equal(input_vectors(layer, x, rows), full[rows])
    assert torch.equal(input_vectors(layer, x.double(), rows), full[rows].double())
    # the layer's own output is these rows times its weight matrix
    y = full @ weight_matrix(layer).detach().T
    out = layer(x).detach()
    out = out if isinstance(layer, nn.Linear) else out.movedim(1, -1)
    torch.testing.assert_close(y + layer.bias.detach(), out.reshape(y.shape), rtol=1e-5, atol=1e-5)  # type: ignore[operator]


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


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def _ratio(model: nn.Module, calib: list[torch.Tensor], held: list[torch.Tensor], names: list[str]) -> float:
    """Mean layer-output MSE (held out, end to end) with AdaRound weights over RTN's, at int4 g32."""
    scheme = QScheme.parse("int4:g32:asym:sf16")
    hessians = layer_hessians(model, names, calib)
    weights = {n: _weight(model.get_submodule(n)) for n in names}
    rtn = swap_weights(model, {n: quantize_tensor(weights[n], scheme) for n in names})
    learned: dict[str, object] = {
        n: adaround_weight(model.get_submodule(n), scheme, hessians[n], iters=200) for n in names
    }
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
