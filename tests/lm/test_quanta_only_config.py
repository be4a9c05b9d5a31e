"""A quanta-saved language model is marked quanta-only in config.json, and quanta.load reads it back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import quanta

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stories260K_hf"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared real data) is not present")


def test_config_json_marks_the_checkpoint_quanta_only(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from quanta.lm import load_hf

    model, tokenizer = load_hf(DATA)
    quanta.quantize(model, "w4a16-g32")
    quanta.save(model, tmp_path / "q", tokenizer=tokenizer)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "quanta"
    assert "--format hf" in config["quantization_config"]["transformers_loadable_export"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(quanta.load(tmp_path / "q")(ids).logits, model(ids).logits)
