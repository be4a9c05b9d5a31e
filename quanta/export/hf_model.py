"""A quantized Hugging Face checkpoint directory as a quanta model: ``load_hf_quantized(dir)``.

``config.json``'s ``quantization_config`` names the layout (``quant_method``: compressed-tensors, gptq or awq);
each quantized layer is read by :mod:`quanta.export.hf_import` into a QTensor (codes preserved) and becomes a
packed ``QuantLinear`` of the transformers model that ``config.json`` describes, built with its parameters on the
meta device; everything else (embeddings, norms, float layers, biases) is loaded as stored. ``quanta.load(dir)``
and ``quanta eval`` call this for directories without a ``quanta.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta.errors import CorruptDataError, UnsupportedError
from quanta.export.hf_import import awq_to_qtensor, ct_to_qtensor, gptq_to_qtensor
from quanta.io import load_tensors
from quanta.tensor import QTensor

__all__ = ["METHODS", "load_hf_quantized", "quant_method"]

METHODS = ("compressed-tensors", "gptq", "awq")


def quant_method(directory: str | os.PathLike[str]) -> str | None:
    """The ``quant_method`` of ``directory/config.json``'s ``quantization_config`` (``None`` when there is none)."""
    file = Path(directory) / "config.json"
    if not file.is_file():
        return None
    try:
        qc = json.loads(file.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(qc.get("quant_method")) if isinstance(qc, dict) else None


def _matches(target: str, name: str, cls_name: str) -> bool:
    # compressed-tensors targets: "re:<regex>" on the module name, else the exact name or class name.
    return bool(re.match(target[3:], name)) if target.startswith("re:") else target in (name, cls_name)


def _ct_args_for(name: str, cls_name: str, qc: dict[str, Any]) -> dict[str, Any] | None:
    """The ``weights`` args of the first config group that targets module ``name`` (and does not ignore it)."""
    if any(_matches(t, name, cls_name) for t in qc.get("ignore") or []):
        return None
    for group in (qc.get("config_groups") or {}).values():
        if group.get("weights") and any(_matches(t, name, cls_name) for t in group.get("targets", [])):
            return dict(group["weights"])
    return None


def _read_layers(
    method: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, QTensor]:
    """Build the QTensor of every quantized module in ``tensors`` (their tensors are removed from it)."""
    qc = dict(config["quantization_config"])
    hints = dict((config.get("quanta") or {}).get("schemes") or {})
    marker = {"compressed-tensors": ".weight_packed", "gptq": ".qweight", "awq": ".qweight"}[method]
    out: dict[str, QTensor] = {}
    for key in [k for k in tensors if k.endswith(marker)]:
        name = key[: -len(marker)]
        parts = {k[len(name) + 1 :]: tensors.pop(k) for k in list(tensors) if k.rpartition(".")[0] == name}
        try:
            if method == "compressed-tensors":
                if "weight_g_idx" in parts:
                    raise UnsupportedError(f"{name}: compressed-tensors act-order (weight_g_idx) is not read.")
                args = _ct_args_for(name, type(model.get_submodule(name)).__name__, qc)
                if args is None:
                    raise CorruptDataError(f"{name} has packed weights but no config group targets it.")
                out[name] = ct_to_qtensor(parts, args, hints.get(name))
            elif method == "gptq":
                qt, order = gptq_to_qtensor(
                    parts["qweight"],
                    parts["qzeros"],
                    parts["scales"],
                    parts.get("g_idx"),
                    int(qc.get("bits", 4)),
                    str(qc.get("checkpoint_format", "gptq")),
                )
                if order is not None:
                    raise UnsupportedError(
                        f"{name} is act-order GPTQ (desc_act): its g_idx groups input rows that are not contiguous, "
                        "and a quanta Linear cannot permute its input. Use gptq_to_qtensor, which returns the "
                        "reordered QTensor and its column order, or re-quantize without desc_act."
                    )
                out[name] = qt
            else:
                if int(qc.get("bits", 4)) != 4 or not qc.get("zero_point", True) or qc.get("version", "gemm") != "gemm":
                    raise UnsupportedError(f"AWQ config {qc}: quanta reads 4-bit GEMM checkpoints with zero points.")
                out[name] = awq_to_qtensor(parts["qweight"], parts["qzeros"], parts["scales"])
        except KeyError as exc:
            raise CorruptDataError(f"{name}: the {method} checkpoint lacks tensor {exc}.") from exc
        if "bias" in parts:
            tensors[f"{name}.bias"] = parts["bias"]
    return out


def load_hf_quantized(directory: str | os.PathLike[str]) -> nn.Module:
    """Load a compressed-tensors, GPTQ or AWQ checkpoint directory as a quanta model (packed QuantLinear layers).

    Args:
        directory: a folder with ``config.json`` (with a ``quantization_config``) and ``model.safetensors``.

    Returns:
        The transformers model in eval mode, float32, whose quantized layers hold the file's codes; quanta.save,
        quanta.eval and the exporters take it like any quanta model.

    Raises:
        UnsupportedError: another quant_method or an unsupported layer (the message says which and why).
        CorruptDataError: missing or inconsistent files.
    """
    from quanta.lm.hf import _parameters_on_meta, transformers_module
    from quanta.nn.linear import QuantLinear

    path = Path(directory)
    method = quant_method(path)
    if method not in METHODS:
        raise UnsupportedError(f"{path}: quant_method {method!r}; quanta reads {', '.join(METHODS)} checkpoints.")
    if not (path / "model.safetensors").is_file():
        raise CorruptDataError(f"{path} has no model.safetensors (sharded checkpoints are not read yet).")
    transformers = transformers_module()
    config = json.loads((path / "config.json").read_text())
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    for attr in ("quantization_config", "quanta"):
        if hasattr(hf_config, attr):
            delattr(hf_config, attr)  # the model built here is quanta's; a later save writes quanta's own files
    arch = (config.get("architectures") or [""])[0]
    cls = getattr(transformers, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UnsupportedError(f"{path}: architecture {arch!r} is not a transformers model class.")
    with _parameters_on_meta():
        model = cls(hf_config)
    tensors = load_tensors(path / "model.safetensors")
    for name, qt in _read_layers(method, config, tensors, model).items():
        model.set_submodule(name, QuantLinear.from_float(model.get_submodule(name), qt))
    for key, value in tensors.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value.float(), requires_grad=False)
        elif leaf in module._buffers:
            module._buffers[leaf] = value
        else:
            raise CorruptDataError(f"{path}: tensor {key} has no place in {arch}.")
    output, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if isinstance(output, nn.Linear) and output.weight.is_meta and getattr(hf_config, "tie_word_embeddings", False):
        output.weight = embed.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CorruptDataError(f"{path} does not hold {', '.join(left[:5])}.")
    setattr(model, "quanta_hf_source", str(path))  # noqa: B010  # quanta.save copies the tokenizer files from here
    return model.eval()
