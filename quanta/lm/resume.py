"""Resumable sequential runs: the state a killed ``quanta quantize --resume`` continues from.

After block ``i`` is quantized, the state directory gets, in this order (each write atomic):

1. ``block-{i}/``: the packed block, written by ``quanta.save`` (safetensors + JSON, like any quanta model);
2. ``hidden-{i}.safetensors``: block ``i``'s outputs for every calibration step, i.e. block ``i + 1``'s inputs;
3. ``progress.json``: ``{"key": ..., "finished": i + 1}``, the commit point; the previous hidden file goes after.

A run killed at any moment (SIGKILL included) leaves a ``progress.json`` that names only complete files. The next
run recaptures block 0's inputs (for the keyword arguments: attention mask, rotary embeddings, ...), puts the
saved hidden states in place of the hidden-state argument, loads the finished blocks and goes on. Everything it
computes from there is what the uninterrupted run computed (the same inputs, bit for bit), so the result is
byte-identical. ``key`` hashes the recipe, the calibration data and the blocks' parameter names and shapes: a
state left by a different run is refused, never silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta.errors import CorruptDataError, QuantaError
from quanta.io import atomic_path, load_tensors, save_tensors

__all__ = ["BlockState", "run_key"]

PROGRESS_FILE = "progress.json"


def run_key(recipe: dict[str, Any], calib_sha256: str, blocks: nn.ModuleList) -> str:
    """What a resumed run must share with the run that left the state (weights are not hashed: too slow)."""
    shapes = [(n, list(p.shape)) for n, p in blocks.named_parameters()]
    text = json.dumps({"recipe": recipe, "calib": calib_sha256, "blocks": shapes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class BlockState:
    """The resumable state of one sequential run in ``directory`` (created on the first record)."""

    def __init__(self, directory: str | os.PathLike[str], key: str) -> None:
        self.directory = Path(directory)
        self.key = key

    def finished(self) -> int:
        """How many blocks the state holds (0 for none).

        Raises:
            QuantaError: the state was left by a run with another recipe, calibration data or model.
            CorruptDataError: the progress file is unreadable.
        """
        progress = self.directory / PROGRESS_FILE
        if not progress.is_file():
            return 0
        try:
            entry = json.loads(progress.read_text())
            key, finished = str(entry["key"]), int(entry["finished"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{progress} is unreadable ({exc}); delete {self.directory} to start over.") from exc
        if key != self.key:
            raise QuantaError(
                f"{self.directory} holds the state of a run with another recipe, calibration data or model; "
                "delete it to start over, or rerun with the same settings to resume."
            )
        return finished

    def restore(self, scope: nn.Module, index: int) -> None:
        """Load finished block ``index`` into ``scope`` (a float or meta skeleton of it), in place."""
        from quanta.checkpoint import load

        load(self.directory / f"block-{index}", scope)

    def hidden(self, finished: int) -> list[torch.Tensor]:
        """The inputs of block ``finished``: the hidden states the last finished block produced, step by step."""
        tensors = load_tensors(self.directory / f"hidden-{finished - 1}.safetensors")
        return [tensors[str(j)] for j in range(len(tensors))]

    def record(self, scope: nn.Module, index: int, hidden: list[torch.Tensor]) -> None:
        """Commit block ``index`` (packed, in ``scope``) and its outputs ``hidden``."""
        from quanta.checkpoint import save

        save(scope, self.directory / f"block-{index}", overwrite=True)
        save_tensors(self.directory / f"hidden-{index}.safetensors", {str(j): h for j, h in enumerate(hidden)})
        with atomic_path(self.directory / PROGRESS_FILE) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "finished": index + 1}))
        (self.directory / f"hidden-{index - 1}.safetensors").unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the state (after the finished model is saved)."""
        shutil.rmtree(self.directory, ignore_errors=True)
