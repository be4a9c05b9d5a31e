"""Methods named in a recipe run inside quanta.quantize: validated first, composed, saved like any other result."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import QuantaError, UnsupportedError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _data(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs with a few strong directions: where learned rounding has something to learn.
    mix = torch.randn(32, 32, generator=torch.Generator().manual_seed(7)) * torch.logspace(0, -1.5, 32)
    return [torch.randn(64, 32, generator=g) @ mix for _ in range(n)]


def _output_mse(model: nn.Module, reference: nn.Module, data: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(((model(x) - reference(x)) ** 2).mean() for x in data)) / len(data)


def test_adaround_preset_beats_rtn_on_held_out_data(tmp_path: Path) -> None:
    calib, held_out = _data(8, seed=1), _data(4, seed=2)
    reference = _mlp()
    rtn = quanta.quantize(_mlp(), "w3a16-g16", calib=calib)
    learned = quanta.quantize(_mlp(), "w3a16-g16-adaround", calib=iter(calib))  # a generator works too
    assert learned[2].weight_scheme == rtn[2].weight_scheme  # same grid, only the rounding differs
    assert _output_mse(learned, reference, held_out) < 0.9 * _output_mse(rtn, reference, held_out)
    loaded = quanta.load(quanta.save(learned, tmp_path / "ada"), _mlp())
    x = held_out[0]
    assert torch.equal(loaded(x), learned(x))
    assert loaded.quanta_recipe["rules"][-1]["method"] == "adaround"


def test_methods_are_validated_before_anything_changes() -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantaError, match="learns from data"):
        quanta.quantize(model, "w4a16-g32-adaround")
    with pytest.raises(UnsupportedError, match="not available"):
        quanta.quantize(model, "w4a16-g32-cle_nosuch")
    with pytest.raises(UnsupportedError, match="one rounding"):
        quanta.quantize(model, "w4a16-g32-adaround_rtn")
    assert isinstance(model[0], nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cle_and_bias_correction_compose_in_one_preset() -> None:
    calib, held_out = _data(4, seed=3), _data(2, seed=4)
    reference = _mlp().eval()
    rtn = quanta.quantize(_mlp().eval(), "w4a8", calib=calib)
    corrected = quanta.quantize(_mlp().eval(), "w4a8-bc", calib=calib)
    both = quanta.quantize(_mlp().eval(), "w4a8-cle_bc", calib=calib)
    assert type(both[2]).__name__ == "QuantLinear" and both[2].act_scheme is not None
    # CLE rescaled the weights before quantizing; bias correction moved the biases after.
    assert not torch.equal(both[0].dequantized_weight(torch.float32), rtn[0].dequantized_weight(torch.float32))
    assert not torch.equal(corrected[4].bias, rtn[4].bias)
    assert _output_mse(corrected, reference, held_out) < _output_mse(rtn, reference, held_out)


def test_rounding_methods_fall_back_to_rtn_for_recurrent_weights() -> None:
    model = nn.Sequential(nn.LSTM(8, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quanta.quantize(model, "w4a16-g8-adaround", calib=[torch.randn(5, 3, 8)])
    assert any("using rtn" in str(w.message) for w in caught)
    assert set(model[0].qweights) == {"weight_ih_l0", "weight_hh_l0"}


class _SigmoidBetween(nn.Module):
    """conv -> BN -> ReLU -> l1 -> sigmoid (functional) -> l2: l1/l2 look like a CLE pair in the module tree."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.l1 = nn.Linear(8 * 4 * 4, 16)
        self.l2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.sigmoid(self.l1(torch.relu(self.bn(self.conv(x))).flatten(1))))


def test_a_failed_cle_gives_the_model_back_as_it_was() -> None:
    model = _SigmoidBetween().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantaError, match="changed the model's output"):
        quanta.quantize(model, "w4a8-cle", calib=[torch.randn(4, 3, 6, 6)])
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.bias is None  # the fold was undone too
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(QuantaError, match="could not run the model"):
        quanta.quantize(_SigmoidBetween().eval(), "w4a8-cle", calib=[torch.randn(4, 7)])


def test_cle_leaves_tied_weights_alone() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(32, 16)
            self.proj = nn.Linear(16, 16)
            self.out = nn.Linear(16, 32, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.proj(self.emb(ids))))

    model = Tied().eval()
    ids = torch.randint(0, 32, (4, 6))
    quanta.quantize(model, "w4a8-cle_bc", calib=[ids])
    assert model.out.weight_codes is not None and model.emb.weight is not None  # embeddings stay float
    assert torch.isfinite(model(ids)).all()
