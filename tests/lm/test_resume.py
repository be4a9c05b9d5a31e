"""Resumable sequential runs: a run killed with SIGKILL after block k continues to a byte-identical file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quanta.errors import QuantaError
from quanta.lm import BlockState, quantize_sequential

transformers = pytest.importorskip("transformers")

# One script for all three runs, each in a fresh process (as a killed CLI run and its rerun are), on one thread so
# the float sums are the same in every process.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch, transformers
    import quanta
    import quanta.lm.resume as resume
    from quanta.lm import quantize_sequential

    torch.set_num_threads(1)
    out, state, kill_after = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    steps = [torch.randint(0, 96, (2, 24), generator=g) for _ in range(4)]
    if kill_after >= 0:
        record = resume.BlockState.record

        def record_then_die(self, scope, index, hidden):
            record(self, scope, index, hidden)
            if index == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        resume.BlockState.record = record_then_die
    torch.manual_seed(0)  # the same torch seed in quanta.json's provenance
    quantize_sequential(model, "w4a16-g32-gptq", steps, resume=state)
    quanta.save(model, out)
    """
)


def _run(tmp_path: Path, out: str, state: str, kill_after: int) -> int:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [sys.executable, str(script), str(tmp_path / out), state, str(kill_after)]
    return subprocess.run(args, env=env, capture_output=True, timeout=300).returncode


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert _run(tmp_path, "plain", "", -1) == 0
    assert _run(tmp_path, "resumed", state, 1) == -signal.SIGKILL  # really killed, after blocks 0 and 1
    assert not (tmp_path / "resumed").exists()
    assert BlockState(state, "").directory.joinpath("progress.json").is_file()
    assert sorted(p.name for p in Path(state).iterdir()) == [
        "block-0",
        "block-1",
        "hidden-1.safetensors",
        "progress.json",
    ]
    assert _run(tmp_path, "resumed", state, 0) == 0  # would die after block 0 if it quantized block 0 again
    plain, resumed = tmp_path / "plain", tmp_path / "resumed"
    assert (plain / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    assert (plain / "quanta.json").read_bytes() == (resumed / "quanta.json").read_bytes()


def test_a_state_from_other_settings_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    steps = [torch.randint(0, 96, (2, 24)) for _ in range(2)]
    quantize_sequential(transformers.LlamaForCausalLM(config).eval(), "w4a16-g32", steps, resume=tmp_path / "s")
    assert (tmp_path / "s" / "block-1").is_dir()
    with pytest.raises(QuantaError, match="another recipe, calibration data or model"):
        quantize_sequential(transformers.LlamaForCausalLM(config).eval(), "w3a16-g16", steps, resume=tmp_path / "s")
