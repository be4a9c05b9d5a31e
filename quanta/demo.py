"""The built-in demo: a small CNN trained on scikit-learn's bundled digits, quantized with every format.

Everything comes from what pip installs (no network, no external files). The trained weights are cached as
safetensors so later runs start at once.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.errors import CorruptDataError, QuantaError
from quanta.eval.presets import PresetResult, compare_presets
from quanta.io import load_tensors, save_tensors
from quanta.primitives.metrics import sqnr_db

__all__ = [
    "DEMO_PRESETS",
    "DEMO_SCHEMES",
    "DemoRow",
    "default_cache_dir",
    "digits_data",
    "find_data_dir",
    "load_or_train",
    "real_models",
    "run_demo",
    "run_presets",
    "run_real",
    "train_digits_cnn",
]

log = logging.getLogger(__name__)

# One or two representative schemes per format family, from 8 bits down to 1.
DEMO_SCHEMES = (
    "int8:ch",
    "uint8:tensor:asym",
    "fp8_e4m3:ch",
    "fp8_e5m2:ch",
    "q1.7",
    "q4.4",
    "fp6_e2m3:g32:sf16",
    "int4:ch",
    "int4:g32:sf16",
    "int4:g32:asym:sf16",
    "int4:g32:fmin:sf16",
    "nf4:g64:sf16",
    "fp4_e2m1:g32:sf16",
    "lloyd4:ch:sf16",
    "pot4:ch",
    "int3:g16:asym:sf16",
    "lloyd3:ch:sf16",
    "int2:g16:asym:sf16",
    "ternary:ch",
    "binary:ch",
)
CACHE_VERSION = "v1"


def default_cache_dir() -> Path:
    """``$QUANTA_CACHE``, else ``$XDG_CACHE_HOME/quanta``, else ``~/.cache/quanta``."""
    if os.environ.get("QUANTA_CACHE"):
        return Path(os.environ["QUANTA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quanta"


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and two linear layers for 8x8 digit images (about 38k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (n, 32, 4, 4)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``, images ``(n, 1, 8, 8)`` in [0, 1].

    The split is a seeded 80/20 permutation.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise QuantaError(
            "the demo needs scikit-learn for its bundled digits data: pip install 'quanta[demo]' (or run make demo)."
        ) from exc

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def train_digits_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int = 15, seed: int = 0) -> DigitsCNN:
    """Train :class:`DigitsCNN` with Adam, deterministically for a given seed."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def load_or_train(
    cache_dir: Path, retrain: bool = False, epochs: int = 15, seed: int = 0
) -> tuple[DigitsCNN, Path, bool]:
    """The cached model if present and valid, else a freshly trained one (then cached).

    ``seed`` fixes the data split and training; models of other seeds than 0 are cached under their own name.

    Returns:
        ``(model, cache path, whether it was trained now)``.
    """
    suffix = f"-seed{seed}" if seed else ""
    path = cache_dir / f"digits_cnn-{CACHE_VERSION}{suffix}.safetensors"
    model = DigitsCNN()
    if path.exists() and not retrain:
        try:
            model.load_state_dict(load_tensors(path))
            return model.eval(), path, False
        except (CorruptDataError, RuntimeError) as exc:
            log.warning("cached demo model %s is unusable (%s); retraining", path, exc)
    x_train, y_train, _, _ = digits_data(seed)
    model = train_digits_cnn(x_train, y_train, epochs=epochs, seed=seed)
    try:
        save_tensors(path, model.state_dict())
    except OSError as exc:
        log.warning("could not cache the demo model at %s (%s); continuing without a cache", path, exc)
    return model, path, True


@dataclass(frozen=True)
class DemoRow:
    scheme: str
    bits_per_weight: float
    sqnr_db: float
    nbytes: int
    accuracy: float


def run_demo(model: nn.Module, schemes: tuple[str, ...] = DEMO_SCHEMES, seed: int = 0) -> tuple[DemoRow, list[DemoRow]]:
    """Quantize every conv/linear weight of ``model`` with each scheme and measure the cost.

    Returns:
        The float baseline row and one row per scheme: bits per weight including scales, SQNR of all weights
        together, storage bytes of the weights, and test accuracy with the dequantized weights (biases stay fp32).
    """
    _, _, x_test, y_test = digits_data(seed)
    weights = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    n_weights = sum(w.numel() for w in weights.values())
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    baseline = DemoRow("float32", 32.0, float("inf"), 4 * n_weights, accuracy(model, x_test, y_test))
    original = {n: w.clone() for n, w in weights.items()}
    modules = dict(model.named_modules())
    rows = []
    for scheme in schemes:
        nbytes, recon = 0, []
        for name, w in original.items():
            qt = quantize_tensor(w, scheme)
            nbytes += qt.nbytes
            w_hat = qt.dequantize()
            recon.append(w_hat.reshape(-1))
            with torch.no_grad():
                modules[name].weight.copy_(w_hat)
        acc = accuracy(model, x_test, y_test)
        rows.append(DemoRow(scheme, 8.0 * nbytes / n_weights, sqnr_db(flat, torch.cat(recon)), nbytes, acc))
    with torch.no_grad():
        for name, w in original.items():
            modules[name].weight.copy_(w)
    return baseline, rows


# The presets, plus plain w4a16-g32 (RTN) so AdaRound's gain at the same size is visible.
DEMO_PRESETS = ("w8a8", "w8a16", "w4a16-g32", "w4a16-g32-adaround", "ternary", "binary")


def run_presets(
    model: nn.Module,
    presets: tuple[str, ...] = DEMO_PRESETS,
    seed: int = 0,
    on_preset: Callable[[str], None] | None = None,
) -> tuple[PresetResult, list[PresetResult]]:
    """Quantize copies of the digits model with each preset (calibrating on the training images where needed).

    Returns:
        The float row and one row per preset (see :func:`quanta.eval.presets.compare_presets`): test accuracy,
        ``quanta.model_nbytes``, and the latency of a forward pass over the 360 test images.
    """
    x_train, _, x_test, y_test = digits_data(seed)
    return compare_presets(
        lambda: copy.deepcopy(model), presets, x_train.split(256), (x_test, y_test), on_preset=on_preset
    )


# The real pretrained models of ../shared/data (see each SOURCE.md), with the calibration/test splits.
REAL_FILES = (
    "lenet5_mnist/mnist_cnn.pt",
    "mnist_test/t10k-images-idx3-ubyte.gz",
    "resnet_cifar10/resnet20-12fca82f.th",
    "cifar10_sample/cifar10_sample.npz",
)


REAL_LATENCY_BATCH = 64  # images per timed forward pass: keeps the real-model demo well under a minute


def find_data_dir(explicit: Path | None = None) -> Path | None:
    """``explicit`` if given (it must hold the real models), else ``../shared/data`` beside the working directory
    or beside the package's checkout if it holds them all, else ``None``.

    Raises:
        QuantaError: ``explicit`` lacks one of the files the real-model demo needs.
    """
    if explicit is not None:
        missing = [f for f in REAL_FILES if not (explicit / f).is_file()]
        if missing:
            raise QuantaError(
                f"{explicit} lacks {', '.join(missing)}; pass the shared data directory (with lenet5_mnist, "
                "mnist_test, resnet_cifar10 and cifar10_sample), or leave out --data."
            )
        return explicit
    for root in (Path.cwd().parent, Path(__file__).resolve().parents[2]):
        candidate = root / "shared" / "data"
        if all((candidate / f).is_file() for f in REAL_FILES):
            return candidate
    return None


@dataclass(frozen=True)
class RealModel:
    key: str
    title: str
    build: Callable[[], nn.Module]
    calib: tuple[torch.Tensor, ...]
    test: tuple[torch.Tensor, torch.Tensor]


def real_models(data_dir: Path) -> list[RealModel]:
    """LeNet-5 on MNIST (calibrate on the first 8,000 test images, evaluate on the last 2,000) and ResNet-20 on
    the CIFAR-10 sample (calibrate on the 400 train images, evaluate on the 150 test images)."""
    from quanta.zoo import cifar10_sample, load_pretrained, mnist_test

    x, y = mnist_test(data_dir / "mnist_test")
    cifar = cifar10_sample(data_dir / "cifar10_sample")
    lenet_path, resnet_path = data_dir / REAL_FILES[0], data_dir / REAL_FILES[2]
    return [
        RealModel(
            "lenet5",
            "LeNet-5 / MNIST (last 2,000 test images)",
            lambda: load_pretrained("lenet5", lenet_path),
            x[:8000].split(500),
            (x[8000:], y[8000:]),
        ),
        RealModel(
            "resnet20",
            "ResNet-20 / CIFAR-10 sample (150 test images)",
            lambda: load_pretrained("resnet20", resnet_path),
            cifar["x_train"].split(100),
            (cifar["x_test"], cifar["y_test"]),
        ),
    ]


def run_real(
    data_dir: Path, presets: tuple[str, ...] = DEMO_PRESETS, on_preset: Callable[[str], None] | None = None
) -> list[tuple[RealModel, PresetResult, list[PresetResult]]]:
    """Every real model with every preset: ``(model, float row, preset rows)`` per model."""
    results = []
    for m in real_models(data_dir):
        base, rows = compare_presets(
            m.build, presets, m.calib, m.test, rounds=3, latency_batch=REAL_LATENCY_BATCH, on_preset=on_preset
        )
        results.append((m, base, rows))
    return results
