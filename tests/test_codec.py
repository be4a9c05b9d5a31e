"""quantize_tensor / dequantize / fake_quantize: granularity, layouts, gradients, rounding and bad input."""

import pytest
import torch

import quanta
from quanta.errors import AxisError, InvalidTensorError, NonFiniteError, QuantaError


def test_ragged_last_group_equals_quantizing_each_slice(gen: torch.Generator) -> None:
    x = torch.randn(3, 10, generator=gen)
    got = quanta.quantize_tensor(x, "int4:g4:asym").dequantize()
    for start in (0, 4, 8):  # groups of 4, 4 and a shorter last group of 2
        part = x[:, start : start + 4]
        expected = quanta.quantize_tensor(part, "int4:ch:asym").dequantize()
        assert torch.equal(got[:, start : start + 4], expected)
    assert quanta.quantize_tensor(x, "int4:g4").params["scale"].shape == (3, 3)


def test_group_larger_than_the_row_is_one_group(gen: torch.Generator) -> None:
    x = torch.randn(5, 9, generator=gen)
    assert torch.equal(
        quanta.quantize_tensor(x, "int4:g128").dequantize(), quanta.quantize_tensor(x, "int4:ch").dequantize()
    )


def test_conv_weights_group_along_in_channels_times_kernel(gen: torch.Generator) -> None:
    w = torch.randn(8, 4, 3, 3, generator=gen)
    qt = quanta.quantize_tensor(w, "int4:ch")
    assert qt.params["scale"].shape == (8, 1)
    assert torch.equal(
        qt.dequantize(), quanta.quantize_tensor(w.reshape(8, -1), "int4:ch").dequantize().reshape(w.shape)
    )


def test_axis_names_the_reduction_dim_for_conv1d_layout(gen: torch.Generator) -> None:
    w_in_out = torch.randn(64, 16, generator=gen)  # GPT-2 Conv1D: [in, out], reduce over rows
    qt = quanta.quantize_tensor(w_in_out, "int4:g32", axis=0)
    assert qt.params["scale"].shape == (16, 2)
    expected = quanta.quantize_tensor(w_in_out.t().contiguous(), "int4:g32").dequantize().t()
    assert torch.equal(qt.dequantize(), expected)
    assert qt.dequantize().shape == (64, 16)


def test_axis_out_of_range() -> None:
    with pytest.raises(AxisError, match="out of range"):
        quanta.quantize_tensor(torch.randn(4, 4), "int8:ch", axis=2)


def test_nan_and_inf_are_reported_with_count_and_position() -> None:
    x = torch.randn(4, 5)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        quanta.quantize_tensor(x, "int8")
    message = str(info.value)
    assert "2 NaN" in message and "1 Inf" in message and "(1, 2)" in message and "nan_to_num" in message
    with pytest.raises(NonFiniteError):
        quanta.fake_quantize(x, "int8")


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (torch.empty(0, 4), "empty"),
        (torch.arange(6), "floating-point"),
        ([1.0, 2.0], "torch.Tensor"),
    ],
)
def test_bad_tensors(x: object, words: str) -> None:
    with pytest.raises(InvalidTensorError, match=words):
        quanta.quantize_tensor(x, "int8")  # type: ignore[arg-type]


def test_errors_are_quanta_errors_and_builtin_compatible() -> None:
    with pytest.raises(QuantaError):
        quanta.quantize_tensor(torch.randn(3), "int99")
    with pytest.raises(ValueError):
        quanta.quantize_tensor(torch.randn(3), "int4:g0")


def test_mismatched_importance_weight() -> None:
    with pytest.raises(InvalidTensorError, match="one importance per value"):
        quanta.quantize_tensor(torch.randn(4, 8), "lloyd2:ch", weight=torch.ones(4, 7))


def test_importance_weights_steer_the_codebook(gen: torch.Generator) -> None:
    x = torch.randn(1, 512, generator=gen)
    w = torch.ones_like(x)
    w[:, :16] = 1000.0  # these 16 values must be reproduced almost exactly
    weighted = quanta.quantize_tensor(x, "lloyd4:ch", weight=w).dequantize()
    plain = quanta.quantize_tensor(x, "lloyd4:ch").dequantize()
    assert (weighted - x)[:, :16].abs().max() < (plain - x)[:, :16].abs().max()


def test_straight_through_gradient_passes_inside_the_range_only() -> None:
    x = torch.tensor([-100.0, -1.0, 0.3, 1.0, 7.0, 100.0], requires_grad=True)
    y = quanta.fake_quantize(x, "q4.4")  # representable range [-8, 7.9375]
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert y.tolist() == [-8.0, -1.0, 0.3125, 1.0, 7.0, 7.9375]


def test_straight_through_matches_torch_fake_quantize_gradient(gen: torch.Generator) -> None:
    x = (torch.randn(16, 32, generator=gen) * 3).requires_grad_()
    ours = quanta.fake_quantize(x, "int8:ch:narrow")
    ours.sum().backward()
    assert x.grad is not None
    scale = quanta.quantize_tensor(x.detach(), "int8:ch:narrow").params["scale"].reshape(-1)
    x2 = x.detach().clone().requires_grad_()
    theirs = torch.fake_quantize_per_channel_affine(x2, scale, torch.zeros(16, dtype=torch.int32), 0, -127, 127)
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    assert x2.grad is not None and torch.equal(x.grad, x2.grad)


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    x = torch.full((100_000,), 0.3)
    scheme = "q1.3:tensor:sr"  # step 1/8: 0.3 = 2.4 steps
    a = quanta.quantize_tensor(x, scheme, generator=torch.Generator().manual_seed(7)).dequantize()
    b = quanta.quantize_tensor(x, scheme, generator=torch.Generator().manual_seed(7)).dequantize()
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.25, 0.375}
    assert abs(float(a.mean()) - 0.3) < 0.002  # standard error ~0.0002
    nearest = quanta.quantize_tensor(x, "q1.3").dequantize()
    assert torch.all(nearest == 0.25)


def test_dequantize_restores_dtype_and_shape(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, generator=gen).to(torch.bfloat16)
    out = quanta.dequantize(quanta.quantize_tensor(x, "int8:ch"))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_scalar_and_vector_inputs() -> None:
    assert quanta.quantize_tensor(torch.tensor(0.7), "int8").dequantize().shape == ()
    v = torch.linspace(-1, 1, 9)
    assert torch.allclose(quanta.quantize_tensor(v, "int8:ch").dequantize(), v, atol=1 / 127)


@pytest.mark.parametrize("scale_dtype", ["sf32", "sf16", "sbf16"])
@pytest.mark.parametrize("scheme", ["int16:ch", "int8:ch", "uint12:ch:asym", "int4:g32", "int10:g64:fmin"])
def test_no_value_is_clipped_whatever_the_scale_dtype(scheme: str, scale_dtype: str, gen: torch.Generator) -> None:
    x = torch.randn(16, 128, generator=gen) * 3
    qt = quanta.quantize_tensor(x, f"{scheme}:{scale_dtype}")
    g = qt.grouping
    step = qt.params["scale"].float().repeat_interleave(g.group_size, dim=1)[:, : g.cols]
    lo_hi = x.abs() + qt.params.get("offset", torch.zeros(1)).float().abs().amax()
    tol = step * 0.5 + 4 * torch.finfo(torch.float32).eps * (lo_hi + step * 2**qt.scheme.bits)
    assert torch.all((x - qt.dequantize()).abs() <= tol)


def test_asymmetric_minimum_keeps_its_gradient_like_torch() -> None:
    x = torch.tensor([-0.9, 0.0, 0.5, 2.1], requires_grad=True)
    y = quanta.fake_quantize(x, "uint4:tensor:asym")
    y.sum().backward()
    qt = quanta.quantize_tensor(x.detach(), "uint4:tensor:asym")
    x2 = x.detach().clone().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(x2, float(qt.params["scale"]), int(qt.params["zero"]), 0, 15)
    ref.sum().backward()
    assert torch.equal(y, ref)
    assert x.grad is not None and x2.grad is not None
    assert x.grad.tolist() == x2.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("scheme", ["int8:ch", "uint8:tensor:asym", "int4:g24:asym", "int3:g16", "uint5:ch:narrow"])
def test_fused_fake_quantize_equals_the_generic_path(scheme: str, gen: torch.Generator) -> None:
    x = (torch.randn(6, 40, generator=gen) * 2).requires_grad_()
    fused = quanta.fake_quantize(x, scheme)
    fused.backward(torch.arange(240.0).reshape(6, 40))
    s = quanta.QScheme.parse(scheme)
    fmt = s.fmt
    with torch.no_grad():
        qt = quanta.quantize_tensor(x.detach(), s)
        g = qt.grouping
        x2d = x.detach().reshape(g.rows, g.cols)  # row-major: the layout of ch/gN, and of per-tensor flattening
        inside = g.map(lambda xb, pb: fmt.inside(xb, pb, s).float(), x2d, qt.params).reshape(6, 40)
    assert torch.equal(fused, qt.dequantize())
    assert x.grad is not None and torch.equal(x.grad, torch.arange(240.0).reshape(6, 40) * inside)
    assert 0 < float(inside.mean()) <= 1
