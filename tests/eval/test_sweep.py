"""``quanta.eval.sweep``: the Pareto front against brute force; every point against the model quantized alone with
its preset (bytes, bits per weight, accuracy, KL by an independent formula); bytes grow with bits; skipped
combinations and named errors; the plot decodes. LeNet-5 on real MNIST; skipped without ../shared/data."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import quanta
from quanta.errors import QuantaError, UnsupportedError
from quanta.eval import accuracy
from quanta.eval.pareto import pareto_front
from quanta.eval.sweep import sweep, sweep_grid
from quanta.eval.sweep_eval import accuracy_evaluation
from quanta.eval.sweep_result import SweepResult

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LENET, MNIST = DATA / "lenet5_mnist" / "mnist_cnn.pt", DATA / "mnist_test"


def _brute_front(costs: list[float], quality: list[float], higher: bool) -> list[int]:
    sign = 1 if higher else -1
    ok = [i for i in range(len(costs)) if not (math.isnan(costs[i]) or math.isnan(quality[i]))]

    def beats(j: int, i: int) -> bool:
        no_worse = costs[j] <= costs[i] and sign * quality[j] >= sign * quality[i]
        return no_worse and (costs[j] < costs[i] or sign * quality[j] > sign * quality[i])

    return sorted((i for i in ok if not any(beats(j, i) for j in ok)), key=lambda i: (costs[i], i))


values = st.one_of(st.integers(0, 6).map(float), st.just(float("nan")))  # small ints: plenty of ties


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.tuples(values, values), max_size=14), st.booleans())
def test_pareto_front_equals_brute_force(points: list[tuple[float, float]], higher: bool) -> None:
    costs, quality = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(costs, quality, higher_is_better=higher)
    brute = _brute_front(costs, quality, higher)
    assert sorted(front) == sorted(brute)
    assert [costs[i] for i in front] == sorted(costs[i] for i in front)  # in increasing cost


def test_pareto_front_length_mismatch() -> None:
    with pytest.raises(QuantaError, match="2 costs and 1 qualities"):
        pareto_front([1.0, 2.0], [0.5])


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    if not LENET.is_file():
        pytest.skip(f"{LENET} (shared real data) is not present")
    from quanta.zoo import load_pretrained, mnist_test

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = mnist_test(MNIST)
    yield load_pretrained("lenet5", LENET).eval(), x[3000:3200], y[3000:3200], [x[:64]]
    torch.set_num_threads(threads)


def _independent_kl(reference: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        log_p, log_q = F.log_softmax(reference(x), -1), F.log_softmax(model(x), -1)
    return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


def test_points_match_the_model_quantized_alone(lenet: tuple) -> None:
    net, x, y, calib = lenet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grid = [*sweep_grid([2, 3, 4, 8], ["rtn"], [32, None]), "w4a16-g32-gptq"]
    result = sweep(net, grid, calib, accuracy_evaluation(net, x, y), rounds=1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the float model is untouched
    assert [p.recipe for p in result.points] == grid and not result.skipped
    float_weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    for point in result.points:
        alone = quanta.quantize(copy.deepcopy(net), point.recipe, calib=calib)
        assert point.nbytes == quanta.model_nbytes(alone)
        # every LeNet parameter sits in a quantized layer, so all its bytes are quantized-layer bytes
        assert point.bits_per_weight == pytest.approx(8 * quanta.model_nbytes(alone) / float_weights, rel=1e-12)
        assert point.quality == accuracy(alone, (x, y))
        assert point.kl == pytest.approx(_independent_kl(net, alone, x), rel=1e-4, abs=1e-9)
        assert point.latency_ms > 0 and point.quantize_seconds > 0
    assert result.reference.nbytes == quanta.model_nbytes(net) and result.reference.quality == accuracy(net, (x, y))
    # bytes grow with bits at a fixed method and group size
    for group in (32, None):
        row = sorted((p.bits, p.nbytes) for p in result.points if p.group == group and p.method == "rtn")
        assert [b for b, _ in row] == [2, 3, 4, 8]
        assert all(a[1] < b[1] for a, b in itertools.pairwise(row))
    front = result.front("bytes")
    costs = [p.nbytes for p in result.points]
    assert [p.recipe for p in front] == [
        result.points[i].recipe for i in _brute_front(costs, [p.quality for p in result.points], True)
    ]
    data = result.to_dict()
    assert [p["front_bytes"] for p in data["points"]] == [p in front for p in result.points]
    assert torch.get_num_threads() == 1  # restored after the 1-thread timings (the fixture set 1)


def test_invalid_combinations_are_skipped_with_reasons(lenet: tuple, tmp_path: Path) -> None:
    net, x, y, _ = lenet
    evaluation = accuracy_evaluation(net, x, y)
    grid = ["w4a16", "w4a16-gptq", "w4a16-lsq", "vq2x16-hqq"]
    result = sweep(net, grid, None, evaluation, rounds=1)
    assert [p.recipe for p in result.points] == ["w4a16"]
    reasons = dict(result.skipped)
    assert "learns from data" in reasons["w4a16-gptq"]
    assert "prepare_qat" in reasons["w4a16-lsq"]
    assert "not one" in reasons["vq2x16-hqq"]  # hqq refuses a codebook scheme
    with pytest.raises(QuantaError, match=r"no combination.*w4a16-gptq: method gptq learns from data.*w4a16-lsq"):
        sweep(net, ["w4a16-gptq", "w4a16-lsq"], None, evaluation)
    with pytest.raises(QuantaError, match="twice"):
        sweep(net, ["w8a16", "w8a16"], None, evaluation)
    with pytest.raises(QuantaError, match="non-empty list"):
        sweep(net, "w8a16", None, evaluation)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError, match=r"gtpq.*available"):
        sweep_grid([4], ["gtpq"], [None])
    with pytest.raises(QuantaError, match="at least one"):
        sweep_grid([], ["rtn"], [None])
    with pytest.raises(QuantaError, match="as many labels"):
        accuracy_evaluation(net, x, y[:10])

    pytest.importorskip("matplotlib")
    from PIL import Image

    from quanta.eval.pareto_plot import plot_sweep

    two = sweep(net, ["w2a16", "w8a16"], None, evaluation, rounds=1)
    path = plot_sweep(two, tmp_path / "sub" / "sweep.png")
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width > 500
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["sweep.png"]  # no temporary file left
    with pytest.raises(QuantaError, match="no points"):
        plot_sweep(SweepResult("accuracy", True, two.reference, (), ()), tmp_path / "empty.png")
