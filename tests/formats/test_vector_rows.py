"""Codebooks per group of output rows (``vq{d}x{k}:rowsN``): one codebook for each N consecutive rows."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import UnsupportedError
from quanta.methods.gptvq import gptvq_weight
from quanta.methods.iw import iw_weight
from quanta.primitives.packing import unpack
from quanta.recipe import preset
from quanta.scheme import QScheme


def test_the_granularity_round_trips_and_is_refused_where_nothing_is_fitted() -> None:
    scheme = QScheme.parse("vq4x256:rows32:sf16")
    assert (scheme.granularity, scheme.group_size, str(scheme)) == ("rows", 32, "vq4x256:rows32:sf16")
    assert str(preset("vq4x256-rows64-gptvq").rules[-1].weight) == "vq4x256:rows64:sf16"
    with pytest.raises(UnsupportedError, match="fits no codebook"):
        QScheme.parse("int4:rows32")
    with pytest.raises(UnsupportedError, match="not a multiple of 32"):
        quanta.quantize_tensor(torch.randn(100, 64), scheme)


def test_each_group_of_rows_decodes_with_its_own_codebook() -> None:
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    qt = quanta.quantize_tensor(w, "vq2x16:rows32:sf16")
    books = qt.params["codebook"].float()  # (3 groups, 1, 16 entries, 2)
    assert books.shape == (3, 1, 16, 2)
    # Independent decode: 2 bits a value; a vector's code is its two sub-codes, least significant first.
    sub = unpack(qt.codes, 2, 96 * 64).reshape(96, 32, 2).long()
    codes = sub[..., 0] | (sub[..., 1] << 2)  # (rows, vectors)
    ref = torch.stack([books[o // 32, 0][codes[o]].reshape(-1) for o in range(96)])
    assert torch.equal(qt.dequantize(), ref)
    assert qt.nbytes == 96 * 64 * 2 // 8 + 3 * 16 * 2 * 2  # codes + three fp16 codebooks
    plain = quanta.quantize_tensor(w, "vq2x16:tensor:sf16")
    assert (qt.dequantize() - w).square().mean() < (plain.dequantize() - w).square().mean()


def test_gptvq_per_group_of_rows_beats_iw_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(64, 96)
    x = torch.randn(1024, 64) @ (torch.randn(64, 64) / 8) + 0.3 * torch.randn(1024, 64)
    h = x.T @ x / x.shape[0]
    scheme = QScheme.parse("vq4x256:rows48:sf16")

    def error(qt: quanta.QTensor) -> float:
        return float((x @ (qt.dequantize() - layer.weight.detach()).T).square().mean())

    assert error(gptvq_weight(layer, scheme, h)) < 0.9 * error(iw_weight(layer, scheme, h))  # measured 0.63
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(96, 16))
    quantized = quanta.quantize(copy.deepcopy(model), "vq2x16-rows16-gptvq", [x[:256], x[256:512]])
    quanta.save(quantized, tmp_path / "m")
    loaded = quanta.load(tmp_path / "m", copy.deepcopy(model))
    assert torch.equal(loaded(x[:8]), quantized(x[:8]))
