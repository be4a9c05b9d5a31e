"""quanta.sensitivity on real models (LeNet-5 on MNIST, stories260K on TinyStories): each measurement against an
independent one-layer quanta.quantize of a copy, the bits property, bytes against model_nbytes, and errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import quanta
from quanta.errors import QuantaError
from quanta.eval import accuracy, mean_nll
from quanta.eval.proxies import PROXIES
from quanta.eval.sensitivity_result import Sensitivity
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LENET, MNIST = DATA / "lenet5_mnist" / "mnist_cnn.pt", DATA / "mnist_test"
STORIES, TEXT = DATA / "stories260K_hf", DATA / "tinystories_val" / "tinystories_val.txt"
needs_lenet = pytest.mark.skipif(not LENET.is_file(), reason=f"{LENET} (shared real data) is not present")
needs_stories = pytest.mark.skipif(not STORIES.is_dir(), reason=f"{STORIES} (shared real data) is not present")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """Small models on a shared 2-core machine: one intra-op thread is faster and avoids thrashing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from quanta.zoo import load_pretrained, mnist_test

    x, y = mnist_test(MNIST)
    net = load_pretrained("lenet5", LENET)
    return net, list(x[:128].split(64)), (x[1000:1300], y[1000:1300])  # calibration and a disjoint eval set


@pytest.fixture(scope="module")
def stories() -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    pytest.importorskip("transformers")
    from quanta.lm import calibration_windows, load_hf

    model, tokenizer = load_hf(STORIES)
    text = TEXT.read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer.encode(text[:20_000], add_special_tokens=False))
    calib = list(calibration_windows(ids, n=4, length=64, seed=0).split(4))
    # a few hundred evaluation tokens from the end of the file, far from the calibration text
    held_out = torch.tensor(tokenizer.encode(text[-4_000:], add_special_tokens=False))[-400:]
    return model, calib, held_out


def _one_layer(model: torch.nn.Module, layer: str, scheme: str, method: str = "rtn", calib: object = None) -> object:
    """The independent path: a copy with only ``layer`` quantized by quanta.quantize and a one-rule recipe."""
    recipe = Recipe(rules=(Rule(pattern=layer, weight=QScheme.parse(scheme), method=method),))
    return quanta.quantize(copy.deepcopy(model), recipe, calib)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@needs_lenet
def test_lenet_loss_and_accuracy_match_one_layer_quantize(lenet: tuple) -> None:
    net, calib, (x, y) = lenet
    before = _state(net)
    loss = quanta.sensitivity(net, ["w2a16-g32", "w4a16"], calib, "loss", eval_data=(x, y))
    acc = quanta.sensitivity(net, ["w2a16-g32"], calib, "accuracy", eval_data=(x, y))
    with torch.no_grad():
        float_loss = float(F.cross_entropy(net(x), y))
    assert loss.float_value == pytest.approx(float_loss, rel=1e-6)
    assert len(loss.entries) == 10 and loss.layers == ("convnet.c1", "convnet.c3", "convnet.c5", "fc.f6", "fc.f7")
    for e in loss.entries:
        q = _one_layer(net, e.layer, e.scheme)
        with torch.no_grad():
            assert e.effect == pytest.approx(float(F.cross_entropy(q(x), y)) - float_loss, rel=1e-5, abs=1e-7)
        assert e.nbytes - e.float_nbytes == quanta.model_nbytes(q) - quanta.model_nbytes(net)
    for e in acc.entries:  # accuracy: counts of correct images, so exactly equal
        assert e.effect == accuracy(net, (x, y)) - accuracy(_one_layer(net, e.layer, e.scheme), (x, y))
    # the float model is left as it was
    assert all(type(m).__module__.startswith("torch") for m in net.modules() if m is not net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@needs_stories
def test_stories_loss_matches_one_layer_quantize_rtn_and_gptq(stories: tuple) -> None:
    model, calib, ids = stories
    rtn = quanta.sensitivity(model, ["w2a16-g32"], calib, "loss", eval_data=ids, window=128, layers="*.layers.0.*")
    gptq = quanta.sensitivity(
        model, ["w4a16-g32-gptq"], calib, "loss", eval_data=ids, window=128, layers="*.layers.1.mlp.down_proj"
    )
    float_nll = mean_nll(model, ids, 128)
    assert rtn.float_value == float_nll and len(rtn.entries) == 7
    for e in rtn.entries:
        assert e.effect == mean_nll(_one_layer(model, e.layer, e.scheme), ids, 128) - float_nll
    (e,) = gptq.entries
    q = _one_layer(model, e.layer, e.scheme, method="gptq", calib=calib)
    assert e.effect == pytest.approx(mean_nll(q, ids, 128) - float_nll, rel=1e-6, abs=1e-9)


@needs_stories
def test_kl_matches_an_independent_kl(stories: tuple) -> None:
    model, calib, _ = stories
    result = quanta.sensitivity(model, ["w2a16-g32"], calib, "kl", layers="*.layers.2.self_attn.v_proj")
    (e,) = result.entries
    q = _one_layer(model, e.layer, e.scheme)
    with torch.no_grad():
        log_p = torch.cat([F.log_softmax(model(b).logits, -1).reshape(-1, 512) for b in calib])
        log_q = torch.cat([F.log_softmax(q(b).logits, -1).reshape(-1, 512) for b in calib])
    expected = float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))
    assert result.float_value == 0.0
    assert e.effect == pytest.approx(expected, rel=1e-4)


@needs_lenet
@needs_stories
def test_two_bits_hurt_more_than_eight_bits_on_every_layer(lenet: tuple, stories: tuple) -> None:
    for model, calib in ((lenet[0], lenet[1]), (stories[0], stories[1])):
        result = quanta.sensitivity(model, ["w2a16-g32", "w8a16"], calib, "kl")
        assert len(result.layers) in (5, 35)  # every conv/linear; lm_head and embeddings stay float in presets
        for layer in result.layers:
            assert result.entry(layer, "w2a16-g32").effect > result.entry(layer, "w8a16").effect > 0


@needs_lenet
def test_rank_correlation_matches_scipy_and_json_round_trips(lenet: tuple) -> None:
    stats = pytest.importorskip("scipy.stats")
    net, calib, _ = lenet
    result = quanta.sensitivity(net, ["w2a16-g32", "w4a16-g32", "w8a16"], calib, "kl")
    for candidate in (None, "w4a16-g32"):
        chosen = [e for e in result.entries if candidate is None or e.candidate == candidate]
        ours = result.rank_correlation(candidate)
        for proxy, sign in PROXIES.items():
            ref = stats.spearmanr([sign * getattr(e, proxy) for e in chosen], [e.effect for e in chosen]).statistic
            assert ours[proxy] == pytest.approx(ref, abs=1e-9)
    assert Sensitivity.from_json(result.to_json()) == result


def test_spearman_with_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from quanta.eval.sensitivity_result import spearman

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 4, (9,), generator=gen).double().tolist()  # many ties
        b = torch.randint(0, 6, (9,), generator=gen).double().tolist()
        ref = stats.spearmanr(a, b).statistic
        assert math.isnan(spearman(a, b)) if math.isnan(ref) else spearman(a, b) == pytest.approx(ref, abs=1e-9)


@needs_lenet
def test_bytes_add_up_to_model_nbytes_of_the_whole_quantized_model(lenet: tuple) -> None:
    net, calib, _ = lenet
    result = quanta.sensitivity(net, ["w4a16-g32"], calib, "kl")
    whole = quanta.quantize(copy.deepcopy(net), "w4a16-g32")
    saved = sum(e.float_nbytes - e.nbytes for e in result.entries)
    predicted = result.float_nbytes - saved
    assert quanta.model_nbytes(whole) == predicted


def test_bad_input_raises_named_errors() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    calib = [torch.randn(16, 8)]
    with pytest.raises(QuantaError, match="needs an evaluation set"):
        quanta.sensitivity(net, ["w4a16"], calib, "accuracy")
    with pytest.raises(QuantaError, match="needs an evaluation set"):
        quanta.sensitivity(net, ["w4a16"], calib, "loss")
    with pytest.raises(QuantaError, match="calibration data is empty"):
        quanta.sensitivity(net, ["w4a16"], [], "kl")
    with pytest.raises(QuantaError, match="needs calibration inputs"):
        quanta.sensitivity(net, ["w4a16"], None, "kl")  # type: ignore[arg-type]
    with pytest.raises(QuantaError, match="non-empty list"):
        quanta.sensitivity(net, "w4a16", calib)
    with pytest.raises(QuantaError, match="no layer to measure"):
        quanta.sensitivity(net, ["w4a16"], calib, layers="nothing.*")
    with pytest.raises(QuantaError, match="unknown metric"):
        quanta.sensitivity(net, ["w4a16"], calib, "mse")
    with pytest.raises(QuantaError, match="as many labels"):
        quanta.sensitivity(net, ["w4a16"], calib, "accuracy", eval_data=(torch.randn(4, 8), torch.zeros(3).long()))
