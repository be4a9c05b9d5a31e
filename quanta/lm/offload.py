"""Offloaded loading: a transformers model whose repeated blocks stay on disk until the sequential pipeline
quantizes them (``quanta quantize SRC_DIR --offload``).

:func:`load_offloaded` builds the architecture from ``config.json`` with every parameter on the meta device, reads
the tensors *outside* the blocks (embeddings, final norm, output head) and leaves the blocks empty. The sequential
pipeline then calls :func:`materialize` on one block at a time, just before it quantizes that block; once the
block is packed its float weights are dropped. So a run's peak memory is about the float tensors outside the
blocks, one float block, the calibration activations and the quantized blocks, however big the model is.

Tensors are read one at a time from ``model.safetensors``, or from the shards that ``model.safetensors.index.json``
lists, straight into fresh memory (:class:`quanta.io.SafetensorsReader`, no memory map), and widened to float32 as
``load_hf`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from quanta.errors import CorruptDataError, QuantaError
from quanta.io import SafetensorsReader
from quanta.lm.hf import HF_CONFIG_FILE, _parameters_on_meta, transformers_module

__all__ = ["ShardedWeights", "load_offloaded", "materialize"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class ShardedWeights:
    """The float tensors of a transformers checkpoint on disk, read by name one at a time.

    Names are the model's ``state_dict`` names; a checkpoint saved from the bare model (no ``base_model_prefix``,
    e.g. GPT-2's ``h.0...`` for ``transformer.h.0...``) is matched too, as transformers matches it.
    """

    def __init__(self, directory: str | os.PathLike[str], base_model_prefix: str = "") -> None:
        self.directory = Path(directory)
        self.prefix = f"{base_model_prefix}." if base_model_prefix else ""
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CorruptDataError(f"{index} is unreadable ({exc}); re-create the checkpoint.") from exc
            files = sorted(set(weight_map.values()))
        elif (self.directory / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise QuantaError(
                f"{self.directory} has no {SINGLE_FILE} or {INDEX_FILE}; --offload streams safetensors weights "
                "(convert a .bin checkpoint with transformers' save_pretrained(safe_serialization=True))."
            )
        self._readers = {name: SafetensorsReader(self.directory / name) for name in files}
        self._where = {key: reader for reader in self._readers.values() for key in reader.names()}

    def _file_key(self, name: str) -> str | None:
        candidates = [name]
        if self.prefix and name.startswith(self.prefix):
            candidates.append(name[len(self.prefix) :])
        elif self.prefix:
            candidates.append(self.prefix + name)
        return next((c for c in candidates if c in self._where), None)

    def __contains__(self, name: str) -> bool:
        return self._file_key(name) is not None

    def read(self, name: str) -> torch.Tensor:
        """The tensor the model calls ``name``; floating-point tensors widened to float32."""
        key = self._file_key(name)
        if key is None:
            raise CorruptDataError(f"{self.directory} holds no tensor for {name!r}; the checkpoint is incomplete.")
        tensor = self._where[key].read(key)
        return tensor.float() if tensor.is_floating_point() else tensor


def materialize(module: nn.Module, prefix: str, weights: ShardedWeights) -> int:
    """Read every meta parameter and buffer of ``module`` (named ``prefix`` + local name in the model) from
    ``weights``, in place; returns the bytes read. Tensors already real are left as they are."""
    total = 0
    for owner_name, owner in module.named_modules():
        for store in (owner._parameters, owner._buffers):
            for leaf, tensor in list(store.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                name = ".".join(p for p in (prefix, owner_name, leaf) if p)
                value = weights.read(name)
                if value.shape != tensor.shape:
                    raise CorruptDataError(
                        f"{weights.directory}: {name} has shape {tuple(value.shape)} on disk but "
                        f"{tuple(tensor.shape)} in config.json's architecture."
                    )
                total += value.numel() * value.element_size()
                if isinstance(tensor, nn.Parameter):
                    store[leaf] = nn.Parameter(value, requires_grad=False)
                else:
                    store[leaf] = value
    return total


def load_offloaded(directory: str | os.PathLike[str]) -> nn.Module:
    """A transformers model from ``directory`` with everything but its repeated blocks read into memory.

    Args:
        directory: a local transformers model folder with safetensors weights.

    Returns:
        the model (eval mode), with ``quanta_offload`` (its :class:`ShardedWeights`), and
        each block's parameters are on the meta device until :func:`materialize` reads them.

    Raises:
        QuantaError: not a transformers directory, or no safetensors weights.
        CorruptDataError: a tensor outside the blocks is missing, or a file is truncated.
    """
    path = Path(directory)
    if not (path / HF_CONFIG_FILE).is_file():
        raise QuantaError(f"{path} has no {HF_CONFIG_FILE}: it is not a transformers model directory.")
    transformers = transformers_module()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    with _parameters_on_meta():
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError:  # not a causal LM (an encoder): the bare model
            model = transformers.AutoModel.from_config(config)
    model.eval()
    weights = ShardedWeights(path, getattr(model, "base_model_prefix", ""))
    from quanta.lm.sequential import find_blocks  # (sequential imports this file)

    blocks_name, _ = find_blocks(model)
    # Everything outside the blocks is read now; a tied output head is not in the file and is tied back below.
    for owner_name, owner in model.named_modules():
        if owner_name == blocks_name or owner_name.startswith(f"{blocks_name}."):
            continue
        for store in (owner._parameters, owner._buffers):
            for leaf, tensor in list(store.items()):
                name = f"{owner_name}.{leaf}" if owner_name else leaf
                if tensor is None or not tensor.is_meta or name not in weights:
                    continue
                value = weights.read(name)
                store[leaf] = nn.Parameter(value, requires_grad=False) if isinstance(tensor, nn.Parameter) else value
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    outside = [
        (n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if not n.startswith(f"{blocks_name}.")
    ]
    missing = [n for n, t in outside if t.is_meta]
    if missing:
        raise CorruptDataError(f"{path} holds no tensor for {', '.join(missing[:5])}; the checkpoint is incomplete.")
    setattr(model, "quanta_hf_source", str(path))  # noqa: B010  # quanta.save copies the tokenizer files from here
    setattr(model, "quanta_offload", weights)  # noqa: B010
    return model
