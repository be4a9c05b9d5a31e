"""One suite over every format family: the properties every registered format must have."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import quanta
from quanta.formats import families, get_format
from quanta.io import load_tensors, save_tensors
from quanta.primitives.packing import packed_nbytes
from tests.conftest import ALL_SCHEMES


def _data(seed: int, shape: tuple[int, ...] = (24, 100)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g) * 2


def test_every_family_is_covered_by_the_suite() -> None:
    covered = {get_format(s.split(":")[0]).__class__ for s in ALL_SCHEMES}
    registered = {f.build(f.pattern.fullmatch(f.examples[0])).__class__ for f in families()}  # type: ignore[arg-type]
    assert registered <= covered


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_requantizing_the_dequantized_tensor_gives_the_same_codes(scheme: str) -> None:
    qt = quanta.quantize_tensor(_data(1), scheme)
    again = quanta.quantize_tensor(qt.dequantize(), scheme)
    if scheme.startswith("lloyd"):  # a refit may order duplicate levels differently: compare values
        assert torch.equal(again.dequantize(), qt.dequantize())
    else:
        assert torch.equal(again.unpacked_codes(), qt.unpacked_codes())


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_codes_stay_in_the_format_range(scheme: str) -> None:
    s = quanta.QScheme.parse(scheme)
    codes = quanta.quantize_tensor(_data(2) * 100, s).unpacked_codes()
    valid = s.fmt.code_values(s)
    assert torch.isin(codes, valid).all()


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_nbytes_equals_theory(scheme: str) -> None:
    s = quanta.QScheme.parse(scheme)
    x = _data(3)
    qt = quanta.quantize_tensor(x, s)
    n_groups = {"tensor": 1, "channel": x.shape[0], "group": x.shape[0] * math.ceil(x.shape[1] / (s.group_size or 1))}
    per_group = {"fp32": 4, "fp16": 2, "bf16": 2}[s.scale_dtype]
    kind = s.format.rstrip("0123456789.")
    if kind in ("int", "uint"):
        per_group *= 2 if s.mode == "fmin" else 1
        per_group += (1 if s.bits <= 8 else 2 if kind == "int" else 4) if s.mode == "asym" else 0
    elif kind == "binary":
        per_group *= 2 if s.mode == "fmin" else 1  # scale, and the lower level
    elif kind == "q":
        per_group = 0
    elif kind == "lloyd":
        per_group *= 2**s.bits
    elif s.format == "q4_k":  # d and dmin, and 16 six-bit sub-block codes in 12 bytes
        per_group = 2 * per_group + 12
    elif s.format.startswith("vq"):  # k x d codebook entries per residual stage
        fmt = s.fmt
        per_group *= fmt.stages * fmt.entries * fmt.dim  # type: ignore[attr-defined]
    code_bytes = math.ceil(s.bits * x.numel() / 8) if s.bits <= 8 else 2 * x.numel()
    assert qt.nbytes == code_bytes + n_groups[s.granularity] * per_group
    assert qt.codes.numel() * qt.codes.element_size() == packed_nbytes(x.numel(), s.bits)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_dict_round_trip_is_bit_identical(scheme: str, tmp_path: object) -> None:
    qt = quanta.quantize_tensor(_data(4, (6, 5, 7)), scheme, axis=1)
    flat = qt.to_dict(prefix="layer.weight.")
    assert all(isinstance(v, torch.Tensor) for v in flat.values())
    path = save_tensors(f"{tmp_path}/q.safetensors", flat)
    back = quanta.QTensor.from_dict(load_tensors(path), prefix="layer.weight.")
    assert str(back.scheme) == str(qt.scheme) and back.shape == qt.shape and back.axis == qt.axis
    assert torch.equal(back.codes, qt.codes)
    assert back.params.keys() == qt.params.keys()
    for k in qt.params:
        assert back.params[k].dtype == qt.params[k].dtype and torch.equal(back.params[k], qt.params[k])
    assert torch.equal(back.dequantize(), qt.dequantize())


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
@pytest.mark.parametrize("value", [0.0, 0.3, -2.5])
def test_constant_tensors_quantize_without_nan(scheme: str, value: float) -> None:
    x = torch.full((4, 32), value)
    out = quanta.quantize_tensor(x, scheme).dequantize()
    assert torch.isfinite(out).all()
    if value == 0.0:
        assert torch.all(out == 0)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_fake_quantize_equals_dequantize_and_keeps_dtype(scheme: str) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = _data(5).to(dtype)
        if quanta.QScheme.parse(scheme).rounding == "sr":
            continue
        expected = quanta.quantize_tensor(x, scheme).dequantize()
        got = quanta.fake_quantize(x, scheme)
        assert got.dtype == dtype and expected.dtype == dtype
        assert torch.equal(got, expected)


# Grids where encoding is "nearest representable value" (ternary uses the TWN threshold instead; vector
# codebooks pick the nearest *vector*, checked in test_vector.py; q4_k has a grid per 32-value sub-block, not
# per group, checked in test_kquant.py).
NEAREST = [s for s in ALL_SCHEMES if not s.startswith(("ternary", "vq", "q4_k"))]


@pytest.mark.parametrize("scheme", NEAREST)
def test_encoding_picks_the_nearest_level(scheme: str) -> None:
    s = quanta.QScheme.parse(scheme)
    x = _data(6, (8, 64))
    qt = quanta.quantize_tensor(x, s)
    g = qt.grouping
    # Brute force: every level of each value's group, from the stored parameters.
    err = (x - qt.dequantize()).abs()
    best = torch.empty_like(x)
    params = qt.params
    for r in range(g.rows):
        for j in range(g.n_groups):
            cols = slice(j * g.group_size, min((j + 1) * g.group_size, g.cols))
            p = {k: v[r : r + 1, j : j + 1] for k, v in params.items()}
            grid = s.fmt.levels(p, s).reshape(-1)
            values = x.reshape(g.rows, g.cols)[r, cols] if s.granularity != "tensor" else x.reshape(-1)
            best_r = (values.unsqueeze(-1) - grid).abs().min(-1).values
            if s.granularity == "tensor":
                best = best_r.reshape(x.shape)
            else:
                best[r, cols] = best_r
    assert torch.all(err <= best + 1e-5 * (1 + x.abs())), (err - best).max()


@given(
    scheme=st.sampled_from(ALL_SCHEMES), seed=st.integers(0, 10_000), rows=st.integers(1, 5), cols=st.integers(1, 70)
)
def test_any_shape_round_trips(scheme: str, seed: int, rows: int, cols: int) -> None:
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    qt = quanta.quantize_tensor(x, scheme)
    back = quanta.QTensor.from_dict(qt.to_dict())
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert qt.dequantize().shape == x.shape
