"""The sensitivity proxies against explicit formulas: H = 2 X^T X / n built from the captured inputs (a conv's
im2col patches via F.unfold), the weight error of the packed layer, and max|x| / rms(x)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.eval.proxies import input_stats, layer_proxies
from quanta.primitives.metrics import sqnr_db


class Net(nn.Module):
    """A strided, dilated, padded, grouped conv, a 1-d conv and a linear: every Hessian layout the proxies read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2)
        self.conv1d = nn.Conv1d(6, 5, kernel_size=3, padding=1)
        self.fc = nn.Linear(5 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (n, 6, 4, 4)
        h = self.conv1d(h.flatten(2)[..., :4])  # (n, 5, 4)
        return self.fc(h.flatten(1))


def _inputs(model: nn.Module, calib: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for x in calib:
            model(x)
    handle.remove()
    return seen


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the matrix X (n, features), built independently (F.unfold for convs)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).double()
    if isinstance(module, nn.Conv1d):  # padding by hand, then the 1-d patches
        x = F.pad(x, (module.padding[0], module.padding[0])).unsqueeze(2)
        cols = F.unfold(x, (1, module.kernel_size[0]), dilation=(1, module.dilation[0]), stride=(1, module.stride[0]))
    else:
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (n, C*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()


@pytest.mark.parametrize("name", ["conv", "conv1d", "fc"])
def test_proxies_match_explicit_hessian_and_formulas(name: str) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    calib = [torch.randn(8, 4, 9, 9), 3 * torch.randn(5, 4, 9, 9)]  # two batches of different sizes
    stats = input_stats(model, [name], calib)[name]
    module = model.get_submodule(name)
    packed = quanta.quantize(copy.deepcopy(model), "w3a16").get_submodule(name)
    got = layer_proxies(module, packed, stats)

    inputs = _inputs(model, calib, name)
    X = torch.cat([_rows(module, x) for x in inputs])  # (n, features)
    H = 2 * X.T @ X / X.shape[0]  # (features, features)
    W = module.weight.detach().double()
    dW = (W - packed.qweight.dequantize().double()).reshape(W.shape[0], -1)  # (out, features of a group)
    groups = getattr(module, "groups", 1)
    per = dW.shape[1]
    diag = torch.stack([torch.diagonal(H)[(o * groups // W.shape[0]) * per :][:per] for o in range(W.shape[0])])
    assert got["hessian_diag"] == pytest.approx(float(0.5 * (diag * dW**2).sum()), rel=1e-9)
    assert got["hessian_trace"] == pytest.approx(float(diag.sum() / diag.numel() * (dW**2).sum()), rel=1e-9)
    assert got["weight_sqnr_db"] == pytest.approx(sqnr_db(W, packed.qweight.dequantize().double()), rel=1e-9)
    flat = torch.cat([x.reshape(-1) for x in inputs]).double()
    assert got["outlier_ratio"] == pytest.approx(float(flat.abs().max() / flat.pow(2).mean().sqrt()), rel=1e-9)


def test_linear_diag_form_is_the_exact_output_error_for_diagonal_inputs() -> None:
    """With uncorrelated input features (X^T X diagonal), the diagonal form is exact: it equals the layer's mean
    squared output error, sum over outputs, of the quantized weight."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 4, bias=False)
    x = torch.eye(6) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.1])  # orthogonal rows: X^T X diagonal
    model = nn.Sequential(layer)
    stats = input_stats(model, ["0"], [x])["0"]
    packed = quanta.quantize(copy.deepcopy(model), "w2a16").get_submodule("0")
    got = layer_proxies(layer, packed, stats)
    with torch.no_grad():
        err = (x @ layer.weight.T - x @ packed.qweight.dequantize().T).double()  # (n, out)
    assert got["hessian_diag"] == pytest.approx(float((err**2).sum(dim=1).mean()), rel=1e-6)
    assert math.isfinite(got["outlier_ratio"] or math.nan)
