"""Loading pretrained checkpoints from local files: ``torch.load(weights_only=True)`` only (no pickle code)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quanta.errors import CorruptDataError, QuantaError
from quanta.zoo.lenet import LeNet5
from quanta.zoo.resnet_cifar import resnet_cifar

ZOO_MODELS = ("lenet5", "resnet20", "resnet32", "resnet44", "resnet56")


def build(name: str) -> nn.Module:
    """Build zoo model ``name`` (``lenet5``, ``resnet20`` .. ``resnet56``) with fresh weights, marked with its name.

    The mark (``model.quanta_zoo``) is saved in quanta.json, so ``quanta.load(dir)`` can rebuild the skeleton.

    Raises:
        QuantaError: unknown name.
    """
    if name == "lenet5":
        model: nn.Module = LeNet5()
    elif name.startswith("resnet") and name[6:].isdigit():
        model = resnet_cifar(int(name[6:]))
    else:
        raise QuantaError(f"unknown zoo model {name!r}; available: {', '.join(ZOO_MODELS)}.")
    model.quanta_zoo = name  # type: ignore[assignment]
    return model


def load_pretrained(name: str, path: str | Path) -> nn.Module:
    """Build zoo model ``name`` (``lenet5``, ``resnet20`` .. ``resnet56``) and load its checkpoint at ``path``.

    Raises:
        QuantaError: unknown name or missing file. CorruptDataError: the checkpoint does not fit.
    """
    model = build(name)
    if not Path(path).is_file():
        raise QuantaError(f"{path} does not exist; pass the local checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CorruptDataError(f"{path} is not a readable checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptDataError(f"{path} does not fit {name}: {exc}") from exc
    return model.eval()
