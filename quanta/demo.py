"""The built-in demo: a small CNN trained on scikit-learn's bundled digits, quantized with every format.

Everything comes from what pip installs (no network, no external files). The trained weights are cached as
safetensors so later runs start at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quanta.codec import quantize_tensor
from quanta.errors import CorruptDataError, QuantaError
from quanta.io import load_tensors, save_tensors
from quanta.primitives.metrics import sqnr_db

__all__ = ["DEMO_SCHEMES", "DemoRow", "default_cache_dir", "digits_data", "run_demo", "train_digits_cnn"]

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


def load_or_train(cache_dir: Path, retrain: bool = False, epochs: int = 15) -> tuple[DigitsCNN, Path, bool]:
    """The cached model if present and valid, else a freshly trained one (then cached).

    Returns:
        ``(model, cache path, whether it was trained now)``.
    """
    path = cache_dir / f"digits_cnn-{CACHE_VERSION}.safetensors"
    model = DigitsCNN()
    if path.exists() and not retrain:
        try:
            model.load_state_dict(load_tensors(path))
            return model.eval(), path, False
        except (CorruptDataError, RuntimeError) as exc:
            log.warning("cached demo model %s is unusable (%s); retraining", path, exc)
    x_train, y_train, _, _ = digits_data()
    model = train_digits_cnn(x_train, y_train, epochs=epochs)
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


def run_demo(model: nn.Module, schemes: tuple[str, ...] = DEMO_SCHEMES) -> tuple[DemoRow, list[DemoRow]]:
    """Quantize every conv/linear weight of ``model`` with each scheme and measure the cost.

    Returns:
        The float baseline row and one row per scheme: bits per weight including scales, SQNR of all weights
        together, storage bytes of the weights, and test accuracy with the dequantized weights (biases stay fp32).
    """
    _, _, x_test, y_test = digits_data()
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


DEMO_PRESETS = ("w8a16", "w8a8", "w4a16-g32", "nf4-g64", "ternary", "binary")


@dataclass(frozen=True)
class PresetRow:
    recipe: str
    accuracy: float
    nbytes: int
    latency_ms: float


def run_presets(model: nn.Module, presets: tuple[str, ...] = DEMO_PRESETS) -> tuple[PresetRow, list[PresetRow]]:
    """Quantize copies of the whole model with each preset (calibrating on training images where needed).

    Returns:
        The float row and one row per preset: test accuracy, ``quanta.model_nbytes`` and the median latency of a
        forward pass over the 360 test images.
    """
    import copy
    import statistics
    import time

    from quanta.api import model_nbytes, quantize

    x_train, _, x_test, y_test = digits_data()

    def latency(m: nn.Module) -> float:
        with torch.no_grad():
            m(x_test)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                m(x_test)
                times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    base = PresetRow("float", accuracy(model, x_test, y_test), model_nbytes(model), latency(model))
    rows = []
    for name in presets:
        q = quantize(copy.deepcopy(model), name, calib=x_train.split(256))
        rows.append(PresetRow(name, accuracy(q, x_test, y_test), model_nbytes(q), latency(q)))
    return base, rows
