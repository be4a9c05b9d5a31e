"""Readers for the evaluation data in ../shared/data (local files only; nothing is downloaded)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quanta.errors import QuantaError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _need(path: Path) -> Path:
    if not path.exists():
        raise QuantaError(f"{path} does not exist; point to a local copy (quanta never downloads data).")
    return path


def mnist_test(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 MNIST test images as LeNet-5 expects them: ``(n, 1, 32, 32)`` normalized, and labels."""
    root = _need(Path(directory))
    with gzip.open(_need(root / "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(_need(root / "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x - MNIST_MEAN) / MNIST_STD, torch.from_numpy(labels.astype(np.int64))


def cifar10_sample(directory: str | Path) -> dict[str, torch.Tensor]:
    """The CIFAR-10 sample: ``x_train`` (400) and ``x_test`` (150) normalized for the ResNets, with labels."""
    with np.load(_need(Path(directory) / "cifar10_sample.npz"), allow_pickle=False) as data:
        mean = torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1)
        out = {}
        for split in ("train", "test"):
            x = torch.from_numpy(data[f"x_{split}"].astype(np.float32) / 255.0)
            out[f"x_{split}"] = (x - mean) / std
            out[f"y_{split}"] = torch.from_numpy(data[f"y_{split}"].astype(np.int64))
        return out
