"""Codebooks shared across layers (``:shared`` / preset ``vq{d}x{k}s``): fitted once, stored once, reloaded shared."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import quanta
from quanta.errors import UnsupportedError
from quanta.scheme import QScheme


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "QuantLinear"]


def test_the_scheme_option_round_trips_and_is_refused_where_nothing_is_fitted_per_tensor() -> None:
    scheme = QScheme.parse("vq4x256:tensor:sf16:shared")
    assert scheme.shared and str(scheme) == "vq4x256:tensor:sf16:shared"
    assert QScheme.parse(str(scheme)) == scheme
    with pytest.raises(UnsupportedError, match="per-tensor codebook formats"):
        QScheme.parse("int4:g32:shared")
    with pytest.raises(UnsupportedError, match="per-tensor codebook formats"):
        QScheme.parse("vq2x16:ch:shared")


def test_every_layer_holds_one_codebook_fitted_on_all_their_weights() -> None:
    model = _mlp()
    quantized = quanta.quantize(copy.deepcopy(model), "vq2x16s")
    books = [m.qweights["weight"].params["codebook"] for m in _linears(quantized)]
    assert all(b is books[0] for b in books)
    # The independent reference: the same format fitted on the three weight matrices laid end to end.
    joint = torch.cat([m.weight.detach().reshape(-1) for m in model if isinstance(m, nn.Linear)])
    ref = quanta.quantize_tensor(joint, "vq2x16:tensor:sf16").params["codebook"]
    assert torch.equal(books[0], ref)


def test_the_shared_codebook_is_counted_and_stored_once(tmp_path: Path) -> None:
    model = _mlp()
    own = quanta.quantize(copy.deepcopy(model), "vq4x256")
    shared = quanta.quantize(copy.deepcopy(model), "vq4x256s")
    book_bytes = 256 * 4 * 2  # 256 entries x 4 values, fp16
    assert quanta.model_nbytes(own) - quanta.model_nbytes(shared) == 2 * book_bytes  # three books became one
    quanta.save(shared, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert sum(k.endswith("codebook") for k in f.keys()) == 1  # noqa: SIM118
    loaded = quanta.load(tmp_path / "m", _mlp())
    books = [m.qweights["weight"].params["codebook"] for m in _linears(loaded)]
    assert all(b.data_ptr() == books[0].data_ptr() for b in books)
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(shared)
    x = torch.randn(8, 32)
    assert torch.equal(loaded(x), shared(x))


def test_data_aware_methods_beat_rtn_on_a_shared_codebook() -> None:
    model = _mlp()
    calib = [torch.randn(64, 32) for _ in range(4)]
    x = torch.cat(calib)
    ref = model(x)

    def error(preset: str) -> float:
        return float((quanta.quantize(copy.deepcopy(model), preset, calib)(x) - ref).square().mean())

    rtn = error("vq4x256s")
    assert error("vq4x256s-iw") < rtn
    assert error("vq4x256s-gptvq") < 0.8 * rtn  # measured 0.59


def test_shared_params_context_codes_onto_the_given_codebook() -> None:
    w = torch.randn(16, 32)
    book = quanta.quantize_tensor(torch.randn(4096), "vq2x16:tensor:shared").params
    with quanta.codec.shared_params(book):
        qt = quanta.quantize_tensor(w, "vq2x16:tensor:shared")
        plain = quanta.quantize_tensor(w, "vq2x16")  # not a shared scheme: fits its own
    assert qt.params["codebook"] is book["codebook"]
    assert not torch.equal(plain.params["codebook"], book["codebook"])
    # Coding onto a fixed codebook is nearest-entry: re-coding the decoded tensor gives the same values.
    with quanta.codec.shared_params(book):
        again = quanta.quantize_tensor(qt.dequantize(), "vq2x16:tensor:shared")
    assert torch.equal(again.dequantize(), qt.dequantize())
