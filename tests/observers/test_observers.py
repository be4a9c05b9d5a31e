import pytest
import torch

from quanta.errors import QuantaError, UnsupportedError
from quanta.observers import get_observer, observer_names

torch_ao = pytest.importorskip("torch.ao.quantization")


def _batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 1000, generator=g) * (1 + i / 4) + 0.3 for i in range(6)]


def test_every_observer_is_registered() -> None:
    assert observer_names() == ["ema", "kl", "minmax", "mse", "percentile"]


def test_minmax_matches_torch_observer() -> None:
    ours, theirs = get_observer("minmax"), torch_ao.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for b in _batches():
        ours.update(b)
        theirs(b)
    scale, zero = ours.qparams("uint8:tensor:asym")
    t_scale, t_zero = theirs.calculate_qparams()
    assert torch.allclose(scale.reshape(1), t_scale, rtol=1e-6) and int(zero) == int(t_zero)


def test_moving_average_matches_torch_observer() -> None:
    ours = get_observer("ema", averaging_constant=0.1)
    theirs = torch_ao.MovingAverageMinMaxObserver(averaging_constant=0.1)
    for b in _batches():
        ours.update(b)
        theirs(b)
    assert ours.range() == pytest.approx((float(theirs.min_val), float(theirs.max_val)), rel=1e-5)


def test_percentile_on_known_data() -> None:
    x = torch.arange(-5000, 5001, dtype=torch.float32)  # uniform integers
    lo, hi = get_observer("percentile", percentile=99.0).fit(x).range()
    assert lo == pytest.approx(-4900, abs=1) and hi == pytest.approx(4900, abs=1)


def test_reservoir_stays_bounded_and_representative() -> None:
    obs = get_observer("percentile", percentile=90.0, max_samples=5000)
    data = torch.cat(_batches(seed=7))  # not the observer's own seed: its keys would track the data's randoms
    for b in data.split(3):
        obs.update(b)
    assert obs.sample_.numel() == 5000 and obs.seen_ == data.numel()  # type: ignore[attr-defined]
    exact = float(torch.quantile(data.reshape(-1).double(), 0.9))
    assert abs(obs.range()[1] - exact) < 0.15


def test_mse_range_never_loses_to_minmax_and_clips_heavy_tails() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    x[:3] = torch.tensor([40.0, -35.0, 38.0])  # a few extreme outliers: clipping them costs less than the step
    mse = get_observer("mse").fit(x)
    minmax = get_observer("minmax").fit(x)

    def err(obs: object) -> float:
        scale, zero = obs.qparams("uint8:tensor:asym")  # type: ignore[attr-defined]
        q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
        return float(((q - zero) * scale - x).pow(2).mean())

    assert err(mse) < err(minmax)
    lo, hi = mse.range()
    assert hi < 38.0 and lo > -35.0
    del g


def test_kl_threshold_lies_inside_the_tail() -> None:
    x = torch.randn(500_000, generator=torch.Generator().manual_seed(2))
    lo, hi = get_observer("kl").fit(x).range()
    assert lo == -hi
    assert float(torch.quantile(x.abs()[:100_000], 0.99)) < hi < float(x.abs().max())


def test_observer_errors() -> None:
    with pytest.raises(QuantaError, match="seen no data"):
        get_observer("minmax").range()
    with pytest.raises(QuantaError, match="available"):
        get_observer("median")
    with pytest.raises(UnsupportedError, match="integer"):
        get_observer("minmax").fit(torch.randn(10)).qparams("fp8_e4m3")
    with pytest.raises(QuantaError):
        get_observer("minmax").update(torch.tensor([1.0, float("nan")]))
