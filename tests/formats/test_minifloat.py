"""FP8/FP6/FP4: bit-exact against torch's float8 casts, and the FP4 grid by hand."""

import torch

import quanta
from quanta.formats.minifloat import MINIFLOATS


def _edge_values() -> torch.Tensor:
    # Subnormals, the normal/subnormal boundary, exact ties between neighbours, signed zeros.
    powers = torch.tensor([2.0**e for e in range(-12, 10)])
    ties = torch.cat([powers * (1 + 2**-4), powers * (1 + 3 * 2**-4), powers * (1 + 2**-3)])
    values = torch.cat([powers, ties, powers * 1.37, torch.tensor([0.0, -0.0, 447.0, 448.0, 440.0])])
    return torch.cat([values, -values])


def test_fp8_e4m3_codes_equal_torch_casts(gen: torch.Generator) -> None:
    x = torch.cat([torch.randn(20000, generator=gen) * 50, _edge_values()])
    qt = quanta.quantize_tensor(x, "fp8_e4m3")
    inv = 1.0 / qt.params["scale"].float().reshape(())
    expected = (x * inv).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(qt.codes, expected)
    assert torch.equal(
        qt.dequantize(), expected.view(torch.float8_e4m3fn).float() * qt.params["scale"].float().reshape(())
    )


def test_fp8_e5m2_codes_equal_torch_casts(gen: torch.Generator) -> None:
    x = torch.cat([torch.randn(20000, generator=gen) * 1e3, _edge_values() * 100]).reshape(-1, 170)
    qt = quanta.quantize_tensor(x, "fp8_e5m2:ch")
    inv = 1.0 / qt.params["scale"].float()  # (rows, 1): one scale per row
    assert torch.equal(qt.codes, (x * inv).to(torch.float8_e5m2).view(torch.uint8).reshape(-1))


def test_minifloat_primitive_matches_torch_unscaled() -> None:
    x = _edge_values()
    for name, dtype in (("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        spec = MINIFLOATS[name]
        expected = x.clamp(-spec.max_value, spec.max_value).to(dtype).view(torch.uint8).int()
        assert torch.equal(spec.encode(x), expected), name


def test_decode_table_matches_torch_for_every_byte() -> None:
    every = torch.arange(256, dtype=torch.int32)
    for name, dtype in (("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        ours = MINIFLOATS[name].decode(every)
        theirs = every.to(torch.uint8).view(dtype).float()
        finite = torch.isfinite(theirs)
        assert torch.equal(ours[finite], theirs[finite]), name
        assert torch.isnan(ours[~finite]).all(), name  # codes we never produce decode to NaN


def test_out_of_range_saturates_instead_of_nan() -> None:
    spec = MINIFLOATS["fp8_e5m2"]
    assert spec.decode(spec.encode(torch.tensor([1e9, -1e9]))).tolist() == [57344.0, -57344.0]


def test_fp4_grid_and_ties_to_even() -> None:
    spec = MINIFLOATS["fp4_e2m1"]
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert spec.table[:8].tolist() == grid
    # Midpoints round to the neighbour with an even mantissa bit: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2,
    # 3.5->4, 5->4; values past 6 saturate.
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0, 0.26, -2.9])
    assert spec.round(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 0.5, -3.0]


def test_fp6_largest_values() -> None:
    assert MINIFLOATS["fp6_e2m3"].table.nan_to_num(0).max().item() == 7.5
    assert MINIFLOATS["fp6_e3m2"].table.nan_to_num(0).max().item() == 28.0


def test_stochastic_rounding_is_unbiased_and_reproducible() -> None:
    spec = MINIFLOATS["fp4_e2m1"]
    x = torch.full((200000,), 2.4)  # between 2 and 3
    draws = spec.round(x, "sr", torch.Generator().manual_seed(1))
    assert set(draws.unique().tolist()) == {2.0, 3.0}
    assert abs(float(draws.mean()) - 2.4) < 0.01  # standard error ~0.001
    again = spec.round(x, "sr", torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


def test_bit_pattern_rounding_equals_the_arithmetic_definition(gen: torch.Generator) -> None:
    # Two independent implementations of round-to-nearest-even: fp32 bit manipulation (used for speed) and
    # per-binade spacing arithmetic (used for stochastic rounding). Every level, every midpoint, random values.
    for name, spec in MINIFLOATS.items():
        finite = spec.table[torch.isfinite(spec.table)].sort().values
        x = torch.cat(
            [
                torch.randn(50_000, generator=gen) * spec.max_value / 3,
                finite,
                (finite[:-1] + finite[1:]) / 2,
                torch.tensor([1e-30, -1e-30, 1e-40, spec.max_value * 10]),
            ]
        )
        assert torch.equal(spec.encode(x), spec._codes_of_values(spec._round_arithmetic(x, "rne", None))), name
