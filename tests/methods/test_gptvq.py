"""GPTVQ: vector codes with Hessian error feedback, against input-weighted k-means (iw) on the same statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import UnsupportedError
from quanta.methods.gptvq import gptvq_weight
from quanta.methods.iw import iw_weight
from quanta.scheme import QScheme


def _correlated_layer(seed: int = 0, k: int = 64, n: int = 48) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layer = nn.Linear(k, n)
    mix = torch.randn(k, k) / k**0.5  # correlated inputs: where error feedback pays
    x = torch.randn(1024, k) @ mix + 0.3 * torch.randn(1024, k)
    return layer, x, x.T @ x / x.shape[0]


def _output_error(layer: nn.Linear, x: torch.Tensor, qt: quanta.QTensor) -> float:
    return float((x @ (qt.dequantize() - layer.weight.detach()).T).square().mean())


@pytest.mark.parametrize("name", ["vq2x16", "vq2x64", "vq4x256", "vq4x16r2"])
def test_gptvq_lowers_the_output_error_against_iw(name: str) -> None:
    layer, x, h = _correlated_layer()
    scheme = QScheme.parse(name)
    iw = _output_error(layer, x, iw_weight(layer, scheme, h))
    gptvq = _output_error(layer, x, gptvq_weight(layer, scheme, h))
    assert gptvq < 0.9 * iw  # measured 0.68-0.74 on this layer


def test_with_identity_statistics_it_is_nearest_entry_coding() -> None:
    # H = I: the whitening is the identity and no error is fed back, so without the refit GPTVQ codes every vector
    # to its nearest entry of the iw codebook, which is what iw itself gives.
    layer, _, _ = _correlated_layer(seed=1)
    scheme = QScheme.parse("vq2x16")
    eye = torch.eye(64)
    ours = gptvq_weight(layer, scheme, eye, refit=False)
    ref = iw_weight(layer, scheme, eye)
    assert torch.equal(ours.params["codebook"], ref.params["codebook"])
    assert torch.equal(ours.dequantize(), ref.dequantize())


def test_the_codebook_refit_never_raises_the_output_error() -> None:
    layer, x, h = _correlated_layer(seed=2)
    for name in ("vq2x16", "vq4x256"):
        scheme = QScheme.parse(name)
        before = _output_error(layer, x, gptvq_weight(layer, scheme, h, refit=False))
        after = _output_error(layer, x, gptvq_weight(layer, scheme, h))
        assert after <= before * 1.001  # fp16 storage of the refitted entries may cost a hair


def test_the_result_is_a_plain_qtensor_of_the_scheme() -> None:
    layer, _, h = _correlated_layer(seed=3)
    qt = gptvq_weight(layer, QScheme.parse("vq2x64"), h)
    again = quanta.quantize_tensor(qt.dequantize(), qt.scheme)  # a decoded codebook tensor re-codes to itself
    assert torch.equal(again.dequantize(), qt.dequantize())
    assert qt.nbytes == iw_weight(layer, QScheme.parse("vq2x64"), h).nbytes


def test_a_recipe_with_gptvq_quantizes_saves_and_reloads(tmp_path: object) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    calib = [torch.randn(64, 32) for _ in range(4)]
    quantized = quanta.quantize(copy.deepcopy(model), "vq2x16-gptvq", calib)
    rtn = quanta.quantize(copy.deepcopy(model), "vq2x16", calib)
    x = torch.cat(calib)
    ref = model(x)
    assert (quantized(x) - ref).square().mean() < (rtn(x) - ref).square().mean()
    path = tmp_path / "m"  # type: ignore[operator]
    quanta.save(quantized, path)
    skeleton = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    assert torch.equal(quanta.load(path, skeleton)(x), quantized(x))


@pytest.mark.parametrize(
    ("scheme", "shape", "words"),
    [
        ("int4:g32", (8, 64), "not a vq"),
        ("vq2x16:ch", (8, 64), "one codebook per layer"),
        ("vq4x256", (8, 66), "multiple of d=4"),
    ],
)
def test_unsupported_inputs_say_what_to_do(scheme: str, shape: tuple[int, int], words: str) -> None:
    layer = nn.Linear(shape[1], shape[0])
    with pytest.raises(UnsupportedError, match=words):
        gptvq_weight(layer, QScheme.parse(scheme), torch.eye(shape[1]))
