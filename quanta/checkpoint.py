"""``quanta.save`` / ``quanta.load``: one on-disk layout, ``model.safetensors`` + ``quanta.json``, never pickle.

``model.safetensors`` holds the model's state dict as stored (packed codes, scales, float parameters) plus, for
each packed weight, the QTensor metadata entry that :meth:`QTensor.from_dict` validates. Tensors shared by several
modules (tied weights) are written once; ``quanta.json`` lists the aliases. ``quanta.json`` also records the
format version, the recipe, each packed module's class and scheme, sizes and provenance.

Writes go to a temporary directory beside the target, renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta._version import __version__
from quanta.api import model_nbytes
from quanta.errors import CorruptDataError, QuantaError
from quanta.io import atomic_dir, load_tensors, save_tensors
from quanta.lm.hf import hf_skeleton, is_hf_model, tie_parameters, write_hf_files
from quanta.lm.kv_cache import KEY_SCALE_BUFFER
from quanta.nn import int8_flow
from quanta.nn.base import QuantModule, quant_class_for
from quanta.nn.fastpath import disable_fused_fast_paths
from quanta.nn.linear import QuantLinear
from quanta.scheme import QScheme
from quanta.tensor import META_KEY, QTensor

__all__ = ["CHECKPOINT_VERSION", "load", "save"]

CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quanta.json"


def _packed_modules(model: nn.Module) -> dict[str, QuantModule]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantModule)}


def save(
    model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False, tokenizer: Any | None = None
) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``quanta.json``, atomically.

    A Hugging Face transformers model also gets its ``config.json`` and tokenizer files (``tokenizer`` when given,
    else those of the directory it was loaded from), so ``quanta.load(directory)`` needs no skeleton.

    Raises:
        QuantaError: ``directory`` exists and ``overwrite`` is False.
    """
    target = Path(directory)
    if target.exists() and not overwrite:
        raise QuantaError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it.")
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[int, int, torch.dtype], str] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in first_name:  # a tied tensor: stored once
            aliases[name] = first_name[key]
            continue
        first_name[key] = name
        tensors[name] = tensor
    modules: dict[str, Any] = {}
    for name, module in _packed_modules(model).items():
        weights: dict[str, Any] = {}
        for weight_name, qt in module.qweights.items():
            tensors[f"{name}.{weight_name}_{META_KEY}"] = qt.to_dict()[META_KEY]
            weights[weight_name] = {"scheme": str(qt.scheme), "nbytes": qt.nbytes}
        first = next(iter(weights.values()))
        modules[name] = {
            "class": type(module).__name__,
            "scheme": first["scheme"],  # the (first) weight's scheme, as version-1 readers expect
            "nbytes": sum(w["nbytes"] for w in weights.values()),
            "weights": weights,
            "kernel": getattr(module, "kernel", "reference"),
            "activation": None if module.act_scheme is None else str(module.act_scheme),
            "dynamic": module.act_dynamic,
            "input_smoothing": module.input_smoothing is not None,  # per-feature input factors (smoothinput)
        }
    config = {
        "format_version": CHECKPOINT_VERSION,
        "recipe": getattr(model, "quanta_recipe", None),
        "zoo": getattr(model, "quanta_zoo", None),
        "hf": None,  # filled for transformers models: the class rebuilt from config.json
        "left_in_float": list(getattr(model, "quanta_left_in_float", [])),  # matched, but no quantized twin
        # Methods that change the structure (BatchNorm folding, CLE) leave Identity modules behind: recorded so that
        # load can apply the same change to a float skeleton.
        "identity": [name for name, m in model.named_modules() if name and isinstance(m, nn.Identity)],
        "modules": modules,
        "aliases": aliases,
        "int8_flow": int8_flow.is_enabled(model),  # int8 activations pass between int8 convs (quanta.nn.int8_flow)
        "model_nbytes": model_nbytes(model),
        "provenance": {
            "quanta": __version__,
            "torch": torch.__version__,
            **dict(getattr(model, "quanta_provenance", None) or {}),  # calibration hash and steps, torch seed
        },
    }
    with atomic_dir(target) as staging:
        if is_hf_model(model):
            config["hf"] = write_hf_files(model, staging, tokenizer)
        save_tensors(staging / WEIGHTS_FILE, tensors)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return target


def load(directory: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved quantized model into the float skeleton ``model`` (same architecture, any weights).

    Packed modules are rebuilt from the stored codes (every QTensor is validated); everything else is loaded with
    ``load_state_dict(strict=True, assign=True)``, so a skeleton built under ``torch.device("meta")`` works and no
    float weight is ever materialised. Without a skeleton, a model from ``quanta.zoo`` is rebuilt (on the meta
    device) from the name recorded in quanta.json, and a transformers model from its config.json. The model is
    returned in eval mode; its outputs are bit-identical to the saved model's.

    Raises:
        QuantaError: no skeleton given. CorruptDataError: missing, newer, truncated or inconsistent files.
    """
    path = Path(directory)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        from quanta.export.hf_model import METHODS, load_hf_quantized, quant_method

        if model is None and quant_method(path) in METHODS:  # a compressed-tensors / GPTQ / AWQ HF checkpoint
            return load_hf_quantized(path)
        raise CorruptDataError(f"{path} has no {CONFIG_FILE}; it is not a quanta model directory.")
    try:
        config = json.loads(config_path.read_text())
        version = config["format_version"]
        modules, aliases = dict(config["modules"]), dict(config.get("aliases", {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"{config_path} is unreadable: {exc}") from exc
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CorruptDataError(
            f"{config_path} has format_version {version!r}; "
            f"this quanta reads up to {CHECKPOINT_VERSION}. Upgrade quanta."
        )
    if model is None:
        model = _skeleton_from_config(path, config)
    # Tensors read from the file sit at its byte offsets; kernels' vector loads want aligned memory, so misaligned
    # ones are copied once here (torch's allocator aligns to 64 bytes). Each original is dropped as soon as it is
    # copied, so the copies add one tensor, not the whole model, to the peak memory of a load.
    read = load_tensors(path / WEIGHTS_FILE)
    tensors: dict[str, torch.Tensor] = {}
    for key in list(read):
        value = read.pop(key)
        tensors[key] = value.clone() if value.data_ptr() % 64 else value
    for alias, original in aliases.items():
        if original not in tensors:
            raise CorruptDataError(f"{path}: alias {alias} points to missing tensor {original}.")
        tensors[alias] = tensors[original]
    # A skeleton that turns out not to fit is given back as it was: its modules, parameters and buffers.
    snapshot = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    swapped: list[tuple[str, nn.Module]] = []
    try:
        built: dict[int, QTensor] = {}
        meta_keys: set[str] = set()
        for name, entry in modules.items():
            try:
                float_module = model.get_submodule(name)
            except AttributeError as exc:
                raise QuantaError(f"{path} has a packed module {name!r} that the skeleton lacks: {exc}") from exc
            if isinstance(float_module, QuantModule):
                raise QuantaError(
                    f"{path}: the skeleton's {name!r} is already quantized ({type(float_module).__name__}); "
                    "pass a float skeleton of the architecture (quantize nothing before loading)."
                )
            quant_class = quant_class_for(float_module)
            if quant_class is None or quant_class.__name__ != entry.get("class"):
                raise QuantaError(
                    f"{path}: module {name!r} was saved as {entry.get('class')}, but the skeleton has "
                    f"{type(float_module).__name__} there; pass the architecture the model was saved from."
                )
            qweights: dict[str, QTensor] = {}
            for weight_name in entry.get("weights") or {"weight": None}:
                qt = QTensor.from_dict(tensors, prefix=f"{name}.{weight_name}_")
                qweights[weight_name] = built.setdefault(qt.codes.data_ptr(), qt)  # tied weights share one QTensor
                meta_keys.add(f"{name}.{weight_name}_{META_KEY}")
            packed = quant_class.from_float_weights(float_module, qweights)
            if entry.get("activation"):  # buffers are created here and filled by load_state_dict below
                packed.set_activation(QScheme.parse(entry["activation"]), bool(entry.get("dynamic", False)))
            if entry.get("input_smoothing"):  # the factors, filled by load_state_dict below
                if not isinstance(packed, QuantLinear):
                    raise CorruptDataError(
                        f"{path}: module {name!r} has input smoothing, which only QuantLinear takes."
                    )
                packed.set_input_smoothing(torch.ones(packed.in_features))
            swapped.append((name, float_module))
            model.set_submodule(name, packed)
        state = {k: v for k, v in tensors.items() if k not in meta_keys}
        swapped += _apply_structure(model, config, state, path)
        if KEY_SCALE_BUFFER in state and KEY_SCALE_BUFFER not in model._buffers:  # calibrated KV-cache key scales
            model.register_buffer(KEY_SCALE_BUFFER, torch.empty_like(state[KEY_SCALE_BUFFER]))
        try:
            # assign=True: a skeleton built on the meta device takes the loaded tensors as they are (no float copy).
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CorruptDataError(f"{path} does not fit the skeleton: {exc}") from exc
        if config.get("hf"):
            tie_parameters(model, aliases)
        left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left_on_meta:
            raise CorruptDataError(
                f"{path} does not hold {', '.join(left_on_meta[:5])}; the skeleton kept meta tensors."
            )
    except BaseException:
        for name, original in reversed(swapped):
            model.set_submodule(name, original)
        for module, params, buffers in snapshot:
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
        raise
    # A loaded quantized model is for inference, like transformers' from_pretrained: eval mode, so BatchNorm and
    # dropout act as they did when it was quantized (a zoo skeleton is built in training mode).
    model.eval()
    disable_fused_fast_paths(model)
    if config.get("int8_flow", True) and int8_flow.can_flow(model):  # files from before the flow had it on load
        int8_flow.enable(model)
    model.quanta_recipe = config.get("recipe")
    provenance = dict(config.get("provenance") or {})
    model.quanta_provenance = {k: v for k, v in provenance.items() if k not in ("quanta", "torch")}  # type: ignore[assignment]
    if config.get("zoo"):
        model.quanta_zoo = config["zoo"]
    if config.get("hf"):
        setattr(model, "quanta_hf_source", str(path))  # noqa: B010  # a later save copies the tokenizer files from here
    return model


def _apply_structure(
    model: nn.Module, config: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> list[tuple[str, nn.Module]]:
    """Make a float skeleton look like the saved model where methods changed its structure.

    Folded BatchNorms (and other modules the saved model had replaced) become ``nn.Identity``; a layer that bias
    correction gave a bias it did not have gets a bias parameter, filled by ``load_state_dict``. Returns the
    ``(name, module)`` pairs it replaced, so a failed load can put them back.
    """
    replaced: list[tuple[str, nn.Module]] = []
    for name in config.get("identity", []):
        try:
            current = model.get_submodule(name)
        except AttributeError as exc:
            raise QuantaError(f"{path} has module {name!r} (Identity) that the skeleton lacks: {exc}") from exc
        if not isinstance(current, nn.Identity):
            replaced.append((name, current))
            model.set_submodule(name, nn.Identity())
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        if leaf != "bias":
            continue
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            continue  # load_state_dict names the unexpected key
        if getattr(module, "bias", False) is None:
            module.bias = nn.Parameter(torch.empty_like(value, device="meta"), requires_grad=False)
    return replaced


def _skeleton_from_config(path: Path, config: dict[str, Any]) -> nn.Module:
    """The architecture named in quanta.json (a ``quanta.zoo`` model, or a transformers model rebuilt from
    config.json), built on the meta device (no float weights)."""
    if config.get("hf"):
        return hf_skeleton(path, dict(config["hf"]))
    zoo_name = config.get("zoo")
    if not zoo_name:
        raise QuantaError(
            f"loading {path} needs the model's architecture: pass a skeleton, e.g. quanta.load(dir, MyNet())."
        )
    from quanta.zoo import build

    with torch.device("meta"):
        return build(str(zoo_name))
