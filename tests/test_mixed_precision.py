"""Mixed precision under a budget (quanta.mixed_precision.allocate and ``quanta quantize --target-bpw/--max-bytes``).

The knapsack is checked against brute-force enumeration; on the real LeNet-5 the quantized model's bytes and bits
per weight are counted independently and compared with the prediction; the recipe reproduces the model bit for bit
through JSON; the minimum of a too-small budget is the size of the model quantized with the cheapest candidate.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import quanta
from quanta.cli import app
from quanta.cli_mixed import parse_size
from quanta.errors import BudgetError, QuantaError
from quanta.eval.sensitivity_result import LayerSensitivity, Sensitivity
from quanta.mixed_precision import allocate
from quanta.nn.base import QuantModule
from quanta.recipe import Recipe

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LENET, MNIST = DATA / "lenet5_mnist" / "mnist_cnn.pt", DATA / "mnist_test"
STORIES, TEXT = DATA / "stories260K_hf", DATA / "tinystories_val" / "tinystories_val.txt"
CANDS = ("w2a16-g32", "w4a16-g32", "w8a16")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _toy(seed: int, layers: int = 4) -> Sensitivity:
    """A hand-made sensitivity: random effects and sizes, cheaper candidates doing more damage."""
    rng = random.Random(seed)
    entries = []
    for i in range(layers):
        numel = rng.randrange(64, 4096)
        float_nbytes = 4 * numel + rng.randrange(0, 64)
        sizes = sorted(rng.sample(range(numel // 8, numel), 3))  # weight bytes: 2- < 4- < 8-bit
        damage = sorted((rng.random() for _ in CANDS), reverse=True)
        for cand, w, eff in zip(CANDS, sizes, damage, strict=True):
            entries.append(
                LayerSensitivity(
                    f"l{i}",
                    "Linear",
                    cand,
                    "",
                    0.0,
                    eff,
                    w + float_nbytes - 4 * numel,
                    float_nbytes,
                    None,
                    None,
                    None,
                    None,
                    weight_nbytes=w,
                    weight_numel=numel,
                )
            )
    names = tuple(f"l{i}" for i in range(layers))
    total = sum(e.float_nbytes for e in entries if e.candidate == CANDS[0]) + 1000
    return Sensitivity("kl", False, 0.0, total, names, CANDS, tuple(entries))


def _brute(sens: Sensitivity, cost: str, limit: float) -> float:
    best = math.inf
    per_layer = [[e for e in sens.entries if e.layer == name] for name in sens.layers]
    for combo in itertools.product(*per_layer):
        if sum(getattr(e, cost) for e in combo) <= limit:
            best = min(best, math.fsum(e.effect for e in combo))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_knapsack_equals_brute_force(seed: int) -> None:
    sens = _toy(seed)
    fixed = sens.float_nbytes - sum(e.float_nbytes for e in sens.entries if e.candidate == CANDS[0])
    low = sum(min(e.nbytes for e in sens.entries if e.layer == n) for n in sens.layers)
    high = sum(max(e.nbytes for e in sens.entries if e.layer == n) for n in sens.layers)
    bucketed = 0
    for budget in np.linspace(low, high + 10, 9).astype(int):
        alloc = allocate(sens, budget_bytes=int(budget) + fixed)
        assert alloc.exact and alloc.nbytes <= budget + fixed
        assert alloc.predicted_effect == pytest.approx(_brute(sens, "nbytes", int(budget)), rel=1e-12)
        coarse = allocate(sens, budget_bytes=int(budget) + fixed, max_cells=16)  # bucketed: feasible, not better
        assert coarse.nbytes <= budget + fixed and coarse.predicted_effect >= alloc.predicted_effect - 1e-12
        bucketed += not coarse.exact
    assert bucketed >= 5  # 4 columns a row: the coarse path really ran
    numel = sum(e.weight_numel or 0 for e in sens.entries if e.candidate == CANDS[0])
    for bpw in (2.0, 3.0, 4.5, 6.0, 9.0):
        try:
            alloc = allocate(sens, target_bpw=bpw)
        except BudgetError:
            assert _brute(sens, "weight_nbytes", bpw * numel / 8) == math.inf
            continue
        assert alloc.bits_per_weight is not None and alloc.bits_per_weight <= bpw
        assert alloc.predicted_effect == pytest.approx(_brute(sens, "weight_nbytes", bpw * numel / 8), rel=1e-12)


def test_budget_errors() -> None:
    sens = _toy(0)
    with pytest.raises(QuantaError, match="give one budget"):
        allocate(sens)
    with pytest.raises(QuantaError, match="give one budget"):
        allocate(sens, budget_bytes=10**6, target_bpw=4.0)
    with pytest.raises(QuantaError, match="positive"):
        allocate(sens, target_bpw=-1.0)
    data = json.loads(sens.to_json())
    for e in data["entries"]:  # a result written before weight sizes were recorded
        del e["weight_nbytes"], e["weight_numel"]
    stripped = Sensitivity.from_json(json.dumps(data))
    assert all(e.weight_nbytes is None and e.weight_numel is None for e in stripped.entries)
    with pytest.raises(QuantaError, match="no weight sizes"):
        allocate(stripped, target_bpw=4.0)
    assert allocate(stripped, budget_bytes=10**7).counts() == {"w8a16": 4}  # bytes still work; least damage


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, Sensitivity]:
    if not LENET.is_file():
        pytest.skip(f"{LENET} (shared real data) is not present")
    from quanta.zoo import load_pretrained, mnist_test

    net = load_pretrained("lenet5", LENET)
    calib = [mnist_test(MNIST)[0][:64]]
    return net, quanta.sensitivity(net, list(CANDS), calib, "kl")


def _packed_bpw(model: torch.nn.Module) -> float:
    qts = [q for m in model.modules() if isinstance(m, QuantModule) for q in m.qweights.values()]
    return 8 * sum(q.nbytes for q in qts) / sum(q.numel for q in qts)


def test_lenet_allocation_is_realised_and_reproducible(
    lenet: tuple[torch.nn.Module, Sensitivity], tmp_path: Path
) -> None:
    net, sens = lenet
    uniform = {c: quanta.quantize(copy.deepcopy(net), c) for c in CANDS}
    budget = (quanta.model_nbytes(uniform["w2a16-g32"]) + quanta.model_nbytes(uniform["w4a16-g32"])) // 2
    alloc = allocate(sens, budget_bytes=budget)
    assert len(alloc.counts()) >= 2  # a real mix
    model = quanta.quantize(copy.deepcopy(net), alloc.recipe())
    assert quanta.model_nbytes(model) == alloc.nbytes <= budget
    assert _packed_bpw(model) == pytest.approx(alloc.bits_per_weight, rel=1e-12)
    for c in alloc.choices:  # each layer packed with its candidate's scheme
        assert str(model.get_submodule(c.layer).weight_scheme) == str(quanta.preset(c.candidate).rules[-1].weight)
    path = tmp_path / "mixed.json"
    path.write_text(alloc.recipe().to_json())
    assert Recipe.from_json(path.read_text()) == alloc.recipe()
    again = quanta.quantize(copy.deepcopy(net), str(path))
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Within bits per weight; a budget above every best choice picks each layer's least damaging candidate.
    by_bpw = allocate(sens, target_bpw=4.0)
    assert _packed_bpw(quanta.quantize(copy.deepcopy(net), by_bpw.recipe())) <= 4.0
    best = allocate(sens, budget_bytes=10**9)
    for c in best.choices:
        assert c.effect == min(e.effect for e in sens.entries if e.layer == c.layer)
    # Below the minimum: the error gives the size of the model with every layer at its cheapest candidate.
    with pytest.raises(BudgetError) as info:
        allocate(sens, budget_bytes=budget // 4)
    low = uniform["w2a16-g32"]
    assert f"{quanta.model_nbytes(low):,} bytes ({_packed_bpw(low):.3f} bits per weight)" in str(info.value)


def test_parse_size() -> None:
    assert [parse_size(t) for t in ("180k", "180kB", "1.5M", "2G", "64KiB", "1.5MiB", "250", " 7 ")] == [
        180_000, 180_000, 1_500_000, 2 * 10**9, 65_536, 1_572_864, 250, 7,
    ]  # fmt: skip
    for bad in ("", "k", "12q", "-5", "0", "1.2.3"):
        with pytest.raises(QuantaError, match="not a size"):
            parse_size(bad)


def test_cli_lenet_target_bpw_and_reproduce(lenet: tuple[torch.nn.Module, Sensitivity], tmp_path: Path) -> None:
    from quanta.zoo import mnist_test

    np.savez(tmp_path / "calib.npz", x=mnist_test(MNIST)[0][:64].numpy())
    model, out = f"zoo:lenet5={LENET}", tmp_path / "out"
    common = ["quantize", model, "--calib", str(tmp_path / "calib.npz"), "--candidates", ",".join(CANDS)]
    result = runner.invoke(app, [*common, "--target-bpw", "3.5", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = quanta.load(out)
    assert data["nbytes"] == quanta.model_nbytes(loaded) == data["allocation"]["nbytes"]
    assert _packed_bpw(loaded) == pytest.approx(data["allocation"]["bits_per_weight"]) and _packed_bpw(loaded) <= 3.5
    report = json.loads((out / "report.json").read_text())  # the report card is written as for a recipe
    assert data["report"] == str(out / "report.html") and report["bytes"]["quantized"] == data["nbytes"]
    again = runner.invoke(app, ["quantize", model, "-r", str(out / "quanta.json"), "-o", str(tmp_path / "b"), "-q"])
    assert again.exit_code == 0, again.output
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    low = runner.invoke(app, [*common, "--max-bytes", "10k", "-o", str(tmp_path / "c")])
    minimum = quanta.model_nbytes(quanta.quantize(copy.deepcopy(lenet[0]), "w2a16-g32"))
    assert low.exit_code == 2 and f"smallest the candidates reach: {minimum:,} bytes" in low.stderr
    assert not (tmp_path / "c").exists()
    both = runner.invoke(app, [*common, "--target-bpw", "3", "--max-bytes", "100k", "-o", str(tmp_path / "d")])
    assert both.exit_code == 2 and "give one budget" in both.stderr
    none = runner.invoke(app, ["quantize", model, "-o", str(tmp_path / "e")])
    assert none.exit_code == 2 and "--target-bpw" in none.stderr


def test_cli_stories_target_bpw(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} (shared real data) is not present")
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT.read_text(encoding="utf-8")[:6_000], encoding="utf-8")
    args = [
        "quantize", str(STORIES), "--target-bpw", "4", "--candidates", "w2a16-g32,w4a16-g32", "--calib", str(calib),
        "--nsamples", "2", "--seqlen", "32", "-o", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = quanta.load(tmp_path / "out")
    assert data["nbytes"] == quanta.model_nbytes(loaded) == data["allocation"]["nbytes"]
    assert 2.75 < _packed_bpw(loaded) <= 4.0 and set(data["allocation"]["counts"]) == {"w2a16-g32", "w4a16-g32"}
    assert not isinstance(loaded.get_submodule("lm_head"), QuantModule)  # the candidates' keepers hold
