"""Hugging Face transformers models from a local directory, and what ``quanta.save`` / ``quanta.load`` need for them.

transformers is an optional extra (``pip install quanta[hf]``): this file imports it only when called. Nothing
here touches the hub: every transformers call passes ``local_files_only=True``.

A saved quantized HF model is ``model.safetensors`` + ``quanta.json`` plus ``config.json`` and the tokenizer
files; ``quanta.load(dir)`` rebuilds the architecture from ``config.json`` with its parameters on the meta device
(buffers computed in ``__init__``, such as rotary frequencies, stay real), so no float weight is materialised.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["HF_CONFIG_FILE", "TOKENIZER_FILES", "is_hf_model", "load_hf"]

HF_CONFIG_FILE = "config.json"
# Files a tokenizer (and generation settings) may live in; copied as they are so a reload tokenizes identically.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "generation_config.json",
)


def transformers_module() -> ModuleType:
    """``transformers``, or a QuantaError saying how to install it."""
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise QuantaError(
            f"Hugging Face models need transformers, which is not installed ({exc}); run: pip install 'quanta[hf]'"
        ) from exc


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (checked without importing transformers)."""
    # transformers.modeling_utils, not the package: the package's lazy PreTrainedModel attribute imports all of
    # transformers' model code on first touch (15 s here), even when the model is not a transformers one.
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def load_hf(directory: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Load a transformers model and its tokenizer from a local directory: float32, eval mode, never the hub.

    A directory written by ``quanta.save`` (it has ``quanta.json``) is loaded with ``quanta.load``, quantized.
    Decoder LMs load as ``AutoModelForCausalLM``; other architectures (e.g. BERT) as ``AutoModel``.

    Args:
        directory: a folder with ``config.json``, the weights and the tokenizer files.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        QuantaError: transformers is not installed, the directory is missing or not a transformers model, or it
            has no tokenizer.

    Example:
        >>> load_hf("/no/such/dir")
        Traceback (most recent call last):
        ...
        quanta.errors.QuantaError: /no/such/dir is not a directory; pass a local transformers model folder.
    """
    path = Path(directory)
    if not path.is_dir():
        raise QuantaError(f"{path} is not a directory; pass a local transformers model folder.")  # never the hub
    if not (path / HF_CONFIG_FILE).is_file():
        raise QuantaError(f"{path} has no {HF_CONFIG_FILE}: it is not a transformers model directory.")
    transformers = transformers_module()
    tokenizer = _load_tokenizer(transformers, path)
    from quanta.checkpoint import CONFIG_FILE, load

    if (path / CONFIG_FILE).is_file():
        return load(path), tokenizer
    from quanta.export.hf_model import METHODS, load_hf_quantized, quant_method

    if quant_method(path) in METHODS:  # compressed-tensors / GPTQ / AWQ weights: read into packed quanta modules
        return load_hf_quantized(path), tokenizer
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    except ValueError:  # not a causal LM (an encoder): the bare model
        model = transformers.AutoModel.from_pretrained(path, config=config, **kwargs)
    model.float().eval()
    setattr(model, "quanta_hf_source", str(path))  # noqa: B010  # quanta.save copies the tokenizer files from here
    return model, tokenizer


def _load_tokenizer(transformers: ModuleType, path: Path) -> Any:
    # transformers may build an empty tokenizer from config.json alone: require the tokenizer's own files.
    if not any((path / name).is_file() for name in TOKENIZER_FILES if name != "generation_config.json"):
        raise QuantaError(
            f"{path} has no tokenizer files (e.g. tokenizer.json, tokenizer_config.json); copy them from the "
            "original model into it."
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise QuantaError(
            f"{path} has no usable tokenizer ({exc}); copy the tokenizer files (e.g. tokenizer.json, "
            "tokenizer_config.json) from the original model into it."
        ) from exc


def write_hf_files(model: nn.Module, directory: Path, tokenizer: Any | None = None) -> dict[str, Any]:
    """Write ``config.json`` and the tokenizer files of an HF ``model`` into ``directory``.

    The tokenizer is ``tokenizer`` when given (``save_pretrained``), else the files of the directory the model was
    loaded from. Returns the ``"hf"`` entry of quanta.json: the model class, used to rebuild the skeleton.
    """
    hf_config: Any = getattr(model, "config")  # noqa: B009  # a PretrainedConfig
    hf_config.to_json_file(str(directory / HF_CONFIG_FILE))
    # Marked quanta-only: transformers refuses the unknown quant_method instead of loading packed codes as floats.
    # `quanta export DIR --format hf` writes the compressed-tensors layout transformers can load.
    config = json.loads((directory / HF_CONFIG_FILE).read_text())
    config["quantization_config"] = {
        "quant_method": "quanta",
        "format": "quanta-only: model.safetensors + quanta.json; load with quanta.load(dir)",
        "transformers_loadable_export": "quanta export DIR --format hf -o OUT (int1..8 weight-only schemes)",
    }
    (directory / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    else:
        source = getattr(model, "quanta_hf_source", None)
        for name in TOKENIZER_FILES if source else ():
            file = Path(str(source)) / name
            if file.is_file() and not (directory / name).exists():
                shutil.copyfile(file, directory / name)
    return {"class": type(model).__name__}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device while buffers stay real (as accelerate's init_empty_weights).

    Non-persistent buffers (rotary frequencies, causal masks) are not in the checkpoint, so they must be computed
    by the constructor; the parameters all come from the file.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    setattr(nn.Module, "register_parameter", register)  # noqa: B010
    try:
        yield
    finally:
        setattr(nn.Module, "register_parameter", original)  # noqa: B010


def hf_skeleton(path: Path, entry: dict[str, Any]) -> nn.Module:
    """The transformers model class named in quanta.json's ``"hf"`` entry, built from ``config.json`` (eval mode)."""
    transformers = transformers_module()
    name = str(entry.get("class", ""))
    cls = getattr(transformers, name, None)
    # Only transformers' own model classes: the name comes from a file and must not pick an arbitrary callable.
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise QuantaError(f"{path}: quanta.json names HF class {name!r}, which transformers does not provide.")
    if not (path / HF_CONFIG_FILE).is_file():
        raise QuantaError(f"{path} has no {HF_CONFIG_FILE}; it is needed to rebuild the {name} architecture.")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    with _parameters_on_meta():
        model = cls(config)
    model.eval()
    return model


def tie_parameters(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make each aliased parameter the very Parameter it aliases (tied embeddings stay one object after a load)."""
    for alias, original in aliases.items():
        owner_name, _, leaf = alias.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
            source = model.get_parameter(original)
        except AttributeError:
            continue  # a buffer, or a packed tensor: shared storage is enough
        if isinstance(owner._parameters.get(leaf), nn.Parameter):
            owner._parameters[leaf] = source
