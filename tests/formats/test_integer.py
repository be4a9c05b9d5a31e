"""Integer formats against torch's own quantize ops and observers, bit for bit."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import quanta
from quanta.primitives.affine import int_range

torch_ao = pytest.importorskip("torch.ao.quantization")


def test_int8_per_channel_codes_equal_torch_fake_quantize(gen: torch.Generator) -> None:
    x = torch.randn(32, 96, generator=gen) * torch.rand(32, 1, generator=gen) * 3
    qt = quanta.quantize_tensor(x, "int8:ch")
    scale = qt.params["scale"].reshape(-1)
    zero = torch.zeros(32, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, -128, 127)
    assert torch.equal(qt.dequantize(), expected)
    # The codes themselves, through torch's real quantized tensor.
    ref = torch.quantize_per_channel(x, scale.double(), zero.long(), 0, torch.qint8).int_repr()
    assert torch.equal(qt.unpacked_codes(), ref.int())


def test_uint8_asym_per_channel_codes_equal_torch(gen: torch.Generator) -> None:
    x = torch.randn(16, 64, generator=gen) + 0.7
    qt = quanta.quantize_tensor(x, "uint8:ch:asym")
    scale, zero = qt.params["scale"].reshape(-1), qt.params["zero"].reshape(-1).int()
    expected = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, 0, 255)
    assert torch.equal(qt.dequantize(), expected)
    ref = torch.quantize_per_channel(x, scale.double(), zero.long(), 0, torch.quint8).int_repr()
    assert torch.equal(qt.unpacked_codes(), ref.int())


def test_per_tensor_asym_codes_equal_torch(gen: torch.Generator) -> None:
    x = torch.randn(1000, generator=gen) * 2 + 1
    qt = quanta.quantize_tensor(x, "uint8:tensor:asym")
    scale, zero = float(qt.params["scale"]), int(qt.params["zero"])
    ref = torch.quantize_per_tensor(x, scale, zero, torch.quint8).int_repr()
    assert torch.equal(qt.unpacked_codes().reshape(-1), ref.int())
    assert torch.equal(qt.dequantize(), torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255))


def test_scales_match_torch_observers(gen: torch.Generator) -> None:
    x = torch.randn(8, 50, generator=gen) + 0.3
    obs = torch_ao.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(x)
    scale, zero = obs.calculate_qparams()
    qt = quanta.quantize_tensor(x, "uint8:tensor:asym")
    assert torch.allclose(qt.params["scale"].reshape(1), scale, rtol=1e-6)
    assert int(qt.params["zero"]) == int(zero)
    # torch's symmetric observer on the narrow range [-127, 127] is absmax / 127, as ours is.
    sym = torch_ao.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127
    )
    sym(x)
    scale, zero = sym.calculate_qparams()
    qt = quanta.quantize_tensor(x, "int8:ch:narrow")
    assert torch.allclose(qt.params["scale"].reshape(-1), scale, rtol=1e-6)
    assert torch.all(zero == 0)


def test_asymmetric_zero_is_exact(gen: torch.Generator) -> None:
    x = torch.randn(4, 33, generator=gen) + 2.0  # all-positive rows would lose 0.0 without widening the range
    x[:, 5] = 0.0
    for scheme in ("uint8:ch:asym", "int4:g8:asym", "int3:ch:asym:sf16"):
        assert torch.all(quanta.quantize_tensor(x, scheme).dequantize()[:, 5] == 0.0), scheme


@given(
    bits=st.integers(2, 16),
    signed=st.booleans(),
    mode=st.sampled_from(["sym", "asym", "fmin"]),
    narrow=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_in_range_error_is_at_most_half_a_step(bits: int, signed: bool, mode: str, narrow: bool, seed: int) -> None:
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(seed)) * 5
    fmt = f"{'' if signed else 'u'}int{bits}"
    scheme = quanta.QScheme(fmt, "group", 16, mode=mode, narrow=narrow)  # type: ignore[arg-type]
    qt = quanta.quantize_tensor(x, scheme)
    qmin, qmax = int_range(bits, signed, narrow)
    codes = qt.unpacked_codes()
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    # Every value inside its group's representable range is within half a step, plus fp32 rounding.
    step = qt.params["scale"].float().repeat_interleave(16, dim=1)[:, :40]
    lo, hi = _group_range(qt, qmin, qmax)
    inside = (x >= lo) & (x <= hi)
    err = (x - qt.dequantize()).abs()
    # fp32 rounding of the products and sums involved, scaled by the largest magnitude among them.
    eps = torch.finfo(torch.float32).eps
    tol = step * 0.5 + 4 * eps * (x.abs() + lo.abs() + hi.abs())
    assert torch.all(err[inside] <= tol[inside])


def _group_range(qt: quanta.QTensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    scheme = qt.scheme
    fmt = scheme.fmt
    ones = torch.ones_like(qt.params["scale"], dtype=torch.int32).unsqueeze(-1)
    lo = fmt.decode(ones * qmin, qt.params, scheme).squeeze(-1).repeat_interleave(16, dim=1)[:, :40]
    hi = fmt.decode(ones * qmax, qt.params, scheme).squeeze(-1).repeat_interleave(16, dim=1)[:, :40]
    return lo, hi


def test_symmetric_scales_never_clip_and_use_the_full_range() -> None:
    neg_extreme = torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.75])
    pos_extreme = -neg_extreme
    full_neg = quanta.quantize_tensor(neg_extreme, "int8")
    full_pos = quanta.quantize_tensor(pos_extreme, "int8")
    narrow = quanta.quantize_tensor(neg_extreme, "int8:tensor:narrow")
    assert float(full_neg.params["scale"]) == 1 / 128  # the extreme lands on -128 exactly
    assert float(full_pos.params["scale"]) == pytest.approx(1 / 127)  # ... or on +127
    assert float(narrow.params["scale"]) == pytest.approx(1 / 127)
    assert full_neg.unpacked_codes().tolist() == [[-128, -64, 0, 64, 96]]
    assert narrow.unpacked_codes().tolist() == [[-127, -64, 0, 64, 95]]  # 63.5 and 95.25: half to even, nearest
    for qt, x in ((full_neg, neg_extreme), (full_pos, pos_extreme), (narrow, neg_extreme)):
        assert float(qt.dequantize().abs().max()) == pytest.approx(float(x.abs().max()), rel=1e-6)


def test_float_offset_puts_levels_inside_the_data() -> None:
    x = torch.tensor([[2.0, 2.5, 3.0, 3.5]])
    qt = quanta.quantize_tensor(x, "uint2:ch:fmin")
    assert float(qt.params["offset"]) == 2.0
    assert torch.allclose(qt.dequantize(), torch.tensor([[2.0, 2.5, 3.0, 3.5]]))
