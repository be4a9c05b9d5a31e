import pytest
import torch
from torch import nn

import quanta


def _layer(out_f: int = 64, in_f: int = 96, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return quanta.quantize(nn.Sequential(nn.Linear(in_f, out_f, bias=bias)), "w8a16")[0]


def test_kernel_is_chosen_statically_for_int8_per_channel() -> None:
    assert _layer().kernel == "int8_weight_only"
    three_bit = quanta.quantize(nn.Sequential(nn.Linear(96, 64)), "w3a16-g16")[0]
    assert three_bit.kernel == "reference"  # no fast kernel for 3-bit codes


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (2, 3, 96)])
def test_kernel_matches_the_reference_path(bias: bool, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _layer(bias=bias)
    x = torch.randn(*shape).to(torch.bfloat16)
    fast = layer(x)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    reference = layer(x)
    assert fast.shape == reference.shape == (*shape[:-1], 64)
    # Both compute in bf16; they differ only by bf16 accumulation and rounding order.
    exact = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32), layer.bias)
    assert (fast.float() - exact).abs().max() <= 0.02 * exact.abs().max()
    assert (reference.float() - exact).abs().max() <= 0.02 * exact.abs().max()


def test_fp32_inputs_take_the_reference_path_exactly() -> None:
    layer = _layer()
    x = torch.randn(5, 96)
    expected = torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32), layer.bias)
    assert torch.equal(layer(x), expected)


def test_shapes_and_memory_the_kernel_cannot_take_are_kept_from_it() -> None:
    # torch's kernel crashes the process on in_features that are not multiples of 16, and on unaligned codes.
    torch.manual_seed(0)
    odd = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(40, 32)), "w8a16")[0]
    assert odd.kernel == "reference"
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    assert odd(x).shape == (3, 32)
    layer = quanta.quantize(torch.nn.Sequential(torch.nn.Linear(64, 32)), "w8a16")[0]
    assert layer.kernel == "int8_weight_only"
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    expected = layer(x)
    codes = layer.weight_codes
    shifted = torch.empty(codes.numel() + 1, dtype=torch.uint8)[1:]  # the same bytes at an odd address
    shifted.copy_(codes)
    layer.weight_codes = shifted
    assert layer.weight_codes.data_ptr() % 64 != 0
    assert torch.equal(layer(x), expected)
