"""Vector codebooks ``vq{d}x{k}``: exact cases, the code layout, nbytes, determinism and input-weighted fitting."""

from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import BitWidthError, UnsupportedError
from quanta.formats.vector import VectorFormat
from quanta.methods.iw import iw_weight
from quanta.primitives.packing import pack
from quanta.recipe import preset


def _book(k: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def _from_book(book: torch.Tensor, rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rows, cols) weight whose vectors are entries of ``book`` (every entry used), and their indices."""
    k = book.shape[0]
    idx = torch.cat(
        [torch.arange(k), torch.randint(0, k, (rows * 8 - k,), generator=torch.Generator().manual_seed(seed))]
    )
    return book[idx].reshape(rows, -1), idx


@pytest.mark.parametrize("name", ["vq2x16", "vq4x256", "vq8x256", "vq2x64"])
def test_a_weight_of_k_distinct_vectors_is_reconstructed_exactly(name: str) -> None:
    fmt = VectorFormat.__new__(VectorFormat)
    fmt.__init__(int(name[2]), int(name.split("x")[1]))  # type: ignore[misc]
    w, _ = _from_book(_book(fmt.entries, fmt.dim), rows=fmt.entries // 2)
    assert torch.equal(quanta.quantize_tensor(w, name).dequantize(), w)


@pytest.mark.parametrize(("name", "bits"), [("vq2x16", 2), ("vq4x256", 2), ("vq2x64", 3), ("vq8x256", 1)])
def test_codes_pack_at_log2_k_bits_a_vector(name: str, bits: int) -> None:
    s = quanta.QScheme.parse(name)
    assert s.bits == bits  # bits a value = log2(k) / d
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    qt = quanta.quantize_tensor(w, s)
    # Independently: each vector's nearest codebook entry, packed as one log2(k)-bit code a vector.
    book = qt.params["codebook"].float().reshape(-1, s.fmt.dim)  # type: ignore[attr-defined]
    vectors = w.reshape(-1, s.fmt.dim)  # type: ignore[attr-defined]
    nearest = torch.cdist(vectors, book).argmin(dim=1)
    assert torch.equal(book[nearest].reshape(w.shape), qt.dequantize())
    assert torch.equal(qt.codes, pack(nearest, bits * s.fmt.dim))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "books"), [("vq4x256:tensor:sf16", 1), ("vq2x16", 1), ("vq4x16r2:tensor:sf16", 2)])
def test_nbytes_is_codes_plus_codebooks(name: str, books: int) -> None:
    s = quanta.QScheme.parse(name)
    fmt = s.fmt
    assert isinstance(fmt, VectorFormat)
    qt = quanta.quantize_tensor(torch.randn(32, 96), s)
    entry = 2 if s.scale_dtype == "fp16" else 4
    vector_bits = books * (fmt.entries.bit_length() - 1)
    assert qt.nbytes == 32 * 96 // fmt.dim * vector_bits // 8 + books * fmt.entries * fmt.dim * entry


def test_fitting_is_deterministic_and_encoding_twice_gives_the_same_codes() -> None:
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(3))
    a, b = quanta.quantize_tensor(w, "vq4x256"), quanta.quantize_tensor(w.clone(), "vq4x256")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.params["codebook"], b.params["codebook"])
    s = a.scheme
    blocks = w.reshape(1, 1, -1)
    again = s.fmt.encode(blocks, a.params, s, None)
    assert torch.equal(s.fmt.encode(a.dequantize().reshape(1, 1, -1), a.params, s, None), again)


@pytest.mark.parametrize("name", ["vq2x16", "vq4x256", "vq8x256", "vq4x16r2"])
@pytest.mark.parametrize("shape", [(3, 7), (1, 1), (5, 13)])
def test_short_tails_round_trip_and_stay_in_their_bits(name: str, shape: tuple[int, int]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    qt = quanta.quantize_tensor(w, name)
    back = quanta.QTensor.from_dict(qt.to_dict())
    assert torch.equal(back.dequantize(), qt.dequantize()) and back.shape == w.shape
    assert torch.isfinite(qt.dequantize()).all()


def test_residual_stage_lowers_the_error() -> None:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(5))
    one = (quanta.quantize_tensor(w, "vq4x16").dequantize() - w).square().mean()
    two = (quanta.quantize_tensor(w, "vq4x16r2").dequantize() - w).square().mean()
    assert two < 0.8 * one


def test_input_weighted_fit_lowers_the_weighted_error() -> None:
    # Even columns matter 1000x more than odd ones: weighted k-means spends its entries on them.
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    importance = torch.where(torch.arange(64) % 2 == 0, 1000.0, 1.0).expand(64, -1).contiguous()

    def weighted_error(qt: quanta.QTensor) -> float:
        return float((importance * (qt.dequantize() - w).square()).sum())

    plain = weighted_error(quanta.quantize_tensor(w, "vq2x16"))
    weighted = weighted_error(quanta.quantize_tensor(w, "vq2x16", weight=importance))
    assert weighted < 0.5 * plain


def test_iw_lowers_the_layer_output_error_against_rtn() -> None:
    torch.manual_seed(7)
    layer = nn.Linear(64, 32)
    scale = torch.logspace(-1, 1, 64)  # inputs of very different energy
    x = torch.randn(512, 64) * scale
    h = x.T @ x / x.shape[0]
    ref = layer(x)

    def output_error(qt: quanta.QTensor) -> float:
        return float((x @ qt.dequantize().T + layer.bias - ref).square().mean())

    rtn = output_error(quanta.quantize_tensor(layer.weight.detach(), "vq2x16"))
    iw = output_error(iw_weight(layer, quanta.QScheme.parse("vq2x16"), h))
    assert iw < 0.9 * rtn  # measured: 0.86


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("vq4x64", BitWidthError, "use k in [16, 256, 4096, 65536]"),
        ("vq3x16", BitWidthError, "vector length 3"),
        ("vq2x3", BitWidthError, "power of two"),
        ("vq2x131072", BitWidthError, "power of two"),
        ("vq4x256:sr", UnsupportedError, "rounding"),
        ("vq4x256:asym", UnsupportedError, "mode"),
    ],
)
def test_invalid_names_say_what_to_use(name: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        quanta.QScheme.parse(name)


def test_presets_select_per_layer_codebooks() -> None:
    assert str(preset("vq4x256").rules[-1].weight) == "vq4x256:tensor:sf16"
    rule = preset("vq2x64-iw").rules[-1]
    assert str(rule.weight) == "vq2x64:tensor:sf16" and rule.method == "iw"
    assert preset("vq8x65536").rules[-1].method == "rtn"


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize("name", ["vq4x256", "vq2x16-iw", "vq4x16r2"])
def test_quantized_models_save_and_load_bit_identically(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    calib = [torch.randn(16, 32) for _ in range(4)]
    model = quanta.quantize(_net(), name, calib if name.endswith("-iw") else None)
    x = torch.randn(4, 32)
    path = quanta.save(model, tmp_path / "q")
    torch.manual_seed(1)
    loaded = quanta.load(path, _net())
    assert torch.equal(loaded(x), model(x))
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)
