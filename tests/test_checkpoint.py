"""quanta.save / quanta.load: bit-identical round trips and refusal of damaged or mismatched checkpoints."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import quanta
from quanta import zoo
from quanta.errors import CorruptDataError, QuantaError


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


@pytest.mark.parametrize("preset", ["w8a16", "w4a16-g32", "nf4-g64", "w3a16-g16", "ternary"])
def test_round_trip_is_bit_identical(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quanta.quantize(_net(), preset)
    x = torch.randn(2, 1, 8, 8)
    path = quanta.save(model, tmp_path / "q")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "quanta.json"]
    torch.manual_seed(1)  # a skeleton with different float weights: everything must come from the files
    loaded = quanta.load(path, _net())
    assert torch.equal(loaded(x), model(x))
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)
    config = json.loads((path / "quanta.json").read_text())
    assert config["recipe"]["name"] == preset and config["format_version"] == 1


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    emb, head = nn.Embedding(16, 8), nn.Linear(8, 16, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    quanta.quantize(model, quanta.Recipe(rules=(quanta.Rule(weight=quanta.QScheme.parse("int8:ch")),)))
    path = quanta.save(model, tmp_path / "tied")
    skeleton = nn.ModuleDict({"emb": nn.Embedding(16, 8), "head": nn.Linear(8, 16, bias=False)})
    skeleton["head"].weight = skeleton["emb"].weight
    loaded = quanta.load(path, skeleton)
    assert loaded["emb"].weight_codes.data_ptr() == loaded["head"].weight_codes.data_ptr()
    assert quanta.model_nbytes(loaded) == quanta.model_nbytes(model)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    model = quanta.quantize(_net(), "w8a16")
    quanta.save(model, tmp_path / "q")
    with pytest.raises(QuantaError, match="overwrite"):
        quanta.save(model, tmp_path / "q")
    quanta.save(model, tmp_path / "q", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staging or backup directories left


def test_damaged_or_mismatched_checkpoints(tmp_path: Path) -> None:
    model = quanta.quantize(_net(), "w4a16-g32")
    path = quanta.save(model, tmp_path / "q")
    with pytest.raises(QuantaError, match="skeleton"):
        quanta.load(path)
    wrong = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    with pytest.raises(QuantaError, match="saved as QuantConv2d"):
        quanta.load(path, wrong)
    with pytest.raises(CorruptDataError, match=r"no quanta\.json"):
        quanta.load(tmp_path, _net())
    config = json.loads((path / "quanta.json").read_text())
    (path / "quanta.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CorruptDataError, match="Upgrade"):
        quanta.load(path, _net())
    (path / "quanta.json").write_text(json.dumps(config))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        quanta.load(path, _net())


def test_zoo_models_reload_without_a_skeleton_and_without_float_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.build("lenet5").eval()
    quanta.quantize(model, "w8a16")
    path = quanta.save(model, tmp_path / "lenet")
    assert json.loads((path / "quanta.json").read_text())["zoo"] == "lenet5"
    loaded = quanta.load(path)  # the skeleton comes from quanta.json, built on the meta device
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), model(x))
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


def test_meta_skeleton_loads_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quanta.quantize(_net(), "w4a16-g32")
    path = quanta.save(model, tmp_path / "q")
    with torch.device("meta"):
        skeleton = _net()
    loaded = quanta.load(path, skeleton)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_a_skeleton_with_parts_the_file_lacks_is_refused(tmp_path: Path) -> None:
    model = quanta.quantize(_net(), "w8a16")
    path = quanta.save(model, tmp_path / "q")
    with pytest.raises(QuantaError, match="pass a skeleton"):
        quanta.load(path)
    with torch.device("meta"):
        bigger = nn.Sequential(*_net(), nn.Linear(10, 3))
    with pytest.raises(CorruptDataError, match="does not fit"):
        quanta.load(path, bigger)


def test_models_changed_by_methods_reload_into_the_original_architecture(tmp_path: Path) -> None:
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, 4),
        ).eval()

    model = net()
    with torch.no_grad():  # running statistics that are not the identity, so folding really changes the conv
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    state = model.state_dict()
    calib = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    quanta.quantize(model, "w4a8-cle_bc", calib=calib)  # folds the BatchNorm, rescales, adds conv biases
    assert isinstance(model[1], nn.Identity) and model[3].bias is not None
    path = quanta.save(model, tmp_path / "cle")
    skeleton = net()
    skeleton.load_state_dict(state)
    loaded = quanta.load(path, skeleton)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(loaded(x), model(x))


def test_provenance_records_the_calibration_hash_and_seed(tmp_path: Path) -> None:
    def calib(scale: float) -> Iterator[torch.Tensor]:  # a one-shot generator: hashed as quantize reads it
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            yield scale * torch.randn(2, 1, 8, 8, generator=g)

    hashes = []
    for scale in (1.0, 1.0, 2.0):
        model = quanta.quantize(_net(), "w8a8", calib=calib(scale))
        provenance = json.loads((quanta.save(model, tmp_path / "q", overwrite=True) / "quanta.json").read_text())[
            "provenance"
        ]
        assert provenance["calibration_steps"] == 3 and provenance["torch_seed"] == torch.initial_seed()
        hashes.append(provenance["calibration_sha256"])
    assert hashes[0] == hashes[1] != hashes[2]  # same data, same hash; other data, another
    weight_only = quanta.quantize(_net(), "w8a16")
    assert (
        quanta.save(weight_only, tmp_path / "w").joinpath("quanta.json").read_text().count('"calibration_sha256": null')
    )


def test_a_skeleton_that_does_not_fit_is_given_back_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = quanta.save(quanta.quantize(_net(), "w8a16"), tmp_path / "q")
    wrong = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 9))
    before = {k: v for k, v in wrong.state_dict(keep_vars=True).items()}
    with pytest.raises(CorruptDataError, match="does not fit"):
        quanta.load(path, wrong)
    assert [type(m) for m in wrong] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    after = wrong.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with pytest.raises(QuantaError, match="already quantized"):
        quanta.load(path, quanta.quantize(_net(), "w8a16"))


def test_a_loaded_model_is_in_eval_mode_and_matches_the_saved_one(tmp_path: Path) -> None:
    # A skeleton is built in training mode; BatchNorm would then normalise with batch statistics and the reloaded
    # model would not reproduce the saved one (seen with `quanta quantize zoo:resnet20 -r w8a8`).
    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))

    model = net()
    model[1].running_mean.uniform_(-1, 1)
    model.eval()
    quanta.quantize(model, "w8a16")
    quanta.save(model, tmp_path / "m")
    loaded = quanta.load(tmp_path / "m", net())
    assert not loaded.training
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
