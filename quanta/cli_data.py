"""Reading the command line's inputs: ``zoo:NAME=PATH`` model specs and .npz files of images and labels.

Each reader checks what it reads and raises a QuantaError that says what is wrong and what to write instead.
No pickled object is ever loaded (``allow_pickle=False``; checkpoints go through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quanta.errors import QuantaError

__all__ = [
    "ZOO_INPUTS",
    "calibration_batches",
    "image_model",
    "images_from",
    "labelled_images",
    "labels_from",
    "parse_model",
    "read_npz",
]

# Input each zoo model expects: one image, (channels, height, width), normalized as quanta.zoo.data does.
ZOO_INPUTS = {"lenet5": (1, 32, 32), **{f"resnet{d}": (3, 32, 32) for d in (20, 32, 44, 56)}}


def parse_model(spec: str) -> tuple[str, Path]:
    """``zoo:NAME=PATH`` -> ``(NAME, PATH)``, checked."""
    kind, _, rest = spec.partition(":")
    name, _, path = rest.partition("=")
    if kind != "zoo" or not name or not path:
        raise QuantaError(
            f"MODEL {spec!r} is neither a transformers model directory nor of the form zoo:NAME=PATH (e.g. "
            f"zoo:lenet5=mnist_cnn.pt); NAME is one of {', '.join(ZOO_INPUTS)}."
        )
    if name not in ZOO_INPUTS:
        raise QuantaError(f"unknown zoo model {name!r} in {spec!r}; available: {', '.join(ZOO_INPUTS)}.")
    if not Path(path).is_file():
        raise QuantaError(f"weights file {path} does not exist; pass the local state_dict file after '='.")
    return name, Path(path)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The arrays ``keys`` of the .npz file ``path`` (no pickled objects are ever loaded)."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise QuantaError(f"{path} does not exist; pass an .npz file written with numpy.savez(path, x=..., y=...).")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise QuantaError(f"{path} is a single .npy array; write an .npz with numpy.savez(path, x=...).")
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise QuantaError(
                    f"{path} has no array {missing[0]!r} (it holds {', '.join(data.files) or 'nothing'}); "
                    f"write it with numpy.savez(path, {', '.join(f'{k}=...' for k in keys)})."
                )
            return {k: data[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, QuantaError):
            raise
        raise QuantaError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez.") from exc


def images_from(x: Any, path: Path, name: str) -> torch.Tensor:
    """The ``x`` array of ``path`` as a float32 tensor of the shape zoo model ``name`` expects."""
    import numpy as np

    shape = ZOO_INPUTS[name]
    if x.dtype.kind != "f":
        raise QuantaError(
            f"{path}: x has dtype {x.dtype}; {name} expects float images normalized as quanta.zoo.data does "
            "(e.g. quanta.zoo.mnist_test), not raw pixels."
        )
    if x.ndim != 4 or tuple(x.shape[1:]) != shape or len(x) == 0:
        raise QuantaError(f"{path}: x has shape {tuple(x.shape)}; {name} expects (n, {', '.join(map(str, shape))}).")
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not bool(torch.isfinite(images).all()):
        raise QuantaError(f"{path}: x holds NaN or Inf values; clean the images first.")
    return images


def labels_from(y: Any, path: Path, n: int) -> torch.Tensor:
    """The ``y`` array of ``path`` as int64 class labels, one per image."""
    import numpy as np

    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n or (len(y) and int(y.min()) < 0):
        raise QuantaError(
            f"{path}: y must hold {n} non-negative integer class labels (one per image in x), "
            f"got dtype {y.dtype} and shape {tuple(y.shape)}."
        )
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def image_model(spec: str) -> tuple[torch.nn.Module, str]:
    """``(model, zoo name)`` for ``zoo:NAME=PATH`` (float, pretrained weights) or a quanta directory of a zoo model.

    Raises:
        QuantaError: a directory that names no zoo model, or a malformed spec.
    """
    import quanta
    from quanta.zoo import load_pretrained

    if Path(spec).is_dir():
        net = quanta.load(spec)
        name = getattr(net, "quanta_zoo", None)
        if not name:
            raise QuantaError(f"{spec} holds no config.json and names no zoo model; pass zoo:NAME=PATH instead.")
        return net, str(name)
    name, weights = parse_model(spec)
    return load_pretrained(name, weights), name


def calibration_batches(path: Path, name: str, batch_size: int, max_batches: int) -> list[torch.Tensor]:
    """The ``x`` images of the .npz ``path`` for zoo model ``name``, in at most ``max_batches`` batches."""
    x = images_from(read_npz(path, ("x",))["x"], path, name)
    return list(x.split(batch_size)[:max_batches])


def labelled_images(path: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x, y)`` arrays of the .npz ``path`` as images for zoo model ``name`` and their labels."""
    arrays = read_npz(path, ("x", "y"))
    x = images_from(arrays["x"], path, name)
    return x, labels_from(arrays["y"], path, len(x))
