"""The packed-module base: several named weights per module, and dtype casts that leave the stored weight alone."""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import quanta
from quanta.nn.base import QuantModule, register_quant_module
from quanta.tensor import QTensor


class TwoWeights(nn.Module):
    """A float module with two matrix weights (like an RNN's input and hidden weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(8, 6))
        self.w_out = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(F.linear(x, self.w_in)), self.w_out)


@register_quant_module(TwoWeights)
class QuantTwoWeights(QuantModule):
    def __init__(self, qweights: Mapping[str, QTensor]) -> None:
        super().__init__()
        for name, qt in qweights.items():
            self._set_qweight(qt, name)

    @classmethod
    def weight_names(cls, module: nn.Module) -> tuple[str, ...]:
        return ("w_in", "w_out")

    @classmethod
    def from_float_weights(cls, module: nn.Module, qweights: Mapping[str, QTensor]) -> QuantModule:
        return cls(qweights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(F.linear(x, self.dequantized_weight(x.dtype, "w_in")))
        return F.linear(hidden, self.dequantized_weight(x.dtype, "w_out"))


def test_every_named_weight_is_quantized_saved_and_reloaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(TwoWeights())
    float_model = TwoWeights()
    float_model.load_state_dict(model[0].state_dict())
    quanta.quantize(model, "w4a16-g2")
    packed = model[0]
    assert isinstance(packed, QuantTwoWeights) and set(packed.qweights) == {"w_in", "w_out"}
    # Each weight is its own QTensor, equal to quantizing that float weight alone.
    for name in ("w_in", "w_out"):
        alone = quanta.quantize_tensor(getattr(float_model, name).detach(), "int4:g2:asym:sf16")
        assert torch.equal(packed.qweight_named(name).dequantize(), alone.dequantize())
    x = torch.randn(3, 6)
    expected = F.linear(
        torch.tanh(F.linear(x, packed.qweight_named("w_in").dequantize())), packed.qweight_named("w_out").dequantize()
    )
    assert torch.equal(model(x), expected)
    path = quanta.save(model, tmp_path / "two")
    loaded = quanta.load(path, nn.Sequential(TwoWeights()))
    assert torch.equal(loaded(x), model(x))


def test_bf16_cast_leaves_codes_and_scales_alone() -> None:
    torch.manual_seed(0)
    model = quanta.quantize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)), "w4a16-g32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16)
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith("bias"):  # float parameters of the model follow the cast
            assert after[key].dtype == torch.bfloat16
        else:  # codes, fp16 scales and zero points are stored data, not compute dtype
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    x = torch.randn(5, 64)
    y = model(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    # Same weights as before the cast: only the compute dtype changed.
    model.float()
    torch.testing.assert_close(y.float(), model(x), rtol=0.05, atol=0.05)
