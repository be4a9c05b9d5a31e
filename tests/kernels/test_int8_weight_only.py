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
