"""Bytes of quantized models against the theory of each preset's scheme (issue 3 target: within 2%).

For every preset and model, *measured* is ``quanta.model_nbytes`` of the quantized model (every parameter and
buffer as held in memory, kernel layouts and activation parameters included). *Theory* is computed here from the
float model and the schemes alone: each quantized weight costs ``numel * bits / 8`` bytes of codes plus, per group
of its scheme, the bytes of the stored parameters (scale, zero point, offset, codebook); everything left in float
costs what it costs in the float model. The table also gives the compression against the float model.

    python benchmarks/bench_memory.py            # ResNet-20, LeNet-5, a transformer-sized MLP
    python benchmarks/bench_memory.py --quick    # small models only
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.nn import QuantModule
from quanta.scheme import QScheme
from quanta.zoo import build

PRESETS = (
    "w8a16",
    "w8a8",
    "w8a8-dyn",
    "w4a16-g128",
    "w4a16-g32",
    "w3a16-g16",
    "w2a16-g16",
    "nf4-g64",
    "fp8",
    "ternary",
    "binary",
    "bnn",
    "q4.4",
)


def _weight_theory(shape: torch.Size, scheme: QScheme) -> float:
    """Bytes a weight of ``shape`` needs under ``scheme``: codes plus per-group parameters."""
    numel = math.prod(shape)
    rows, cols = shape[0], numel // shape[0]
    groups = {"tensor": 1, "channel": rows, "group": rows * math.ceil(cols / (scheme.group_size or cols))}
    n_groups = groups[scheme.granularity]
    per_group = sum(
        math.prod(trailing) * torch.empty((), dtype=dtype).element_size()
        for trailing, dtype in scheme.fmt.param_spec(scheme).values()
    )
    code_bytes = math.ceil(numel * scheme.bits / 8) if scheme.bits <= 8 else 2 * numel
    return code_bytes + n_groups * per_group


def _theory(float_model: nn.Module, quantized: nn.Module) -> float:
    float_params = dict(float_model.named_parameters(remove_duplicate=True))
    total = sum(p.numel() * p.element_size() for p in float_params.values())
    total += sum(b.numel() * b.element_size() for b in float_model.buffers())
    # Tied weights are one Parameter in the float model: count each float parameter's quantized form once.
    seen: set[int] = set()
    for name, module in quantized.named_modules():
        if not isinstance(module, QuantModule):
            continue
        for weight_name, qt in module.qweights.items():
            float_weight = type(module).float_weight(float_model.get_submodule(name), weight_name)
            if id(float_weight) in seen:
                continue
            seen.add(id(float_weight))
            dotted = f"{name}.{weight_name}" if name else weight_name
            if dotted in float_params:  # a tied duplicate is absent from named_parameters: counted once
                total -= float_params[dotted].numel() * float_params[dotted].element_size()
            total += _weight_theory(qt.shape, qt.scheme)
    return total


class _Mlp(nn.Module):
    """A transformer-sized feed-forward block: the shapes language models quantize."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(x))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models and three presets")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    models = {
        "LeNet-5": (lambda: build("lenet5"), (2, 1, 32, 32)),
        "ResNet-20": (lambda: build("resnet20"), (2, 3, 32, 32)),
    }
    if not args.quick:
        models["MLP 1024-4096-1024"] = (lambda: _Mlp(1024, 4096), (2, 1024))
    presets = (*PRESETS[:3], "w4a16-g32") if args.quick else PRESETS
    print("| model | preset | measured bytes | theory bytes | measured / theory | x smaller than float |")
    print("|---|---|---:|---:|---:|---:|")
    worst = 0.0
    for title, (make, input_shape) in models.items():
        for preset in presets:
            torch.manual_seed(0)
            float_model = make().eval()
            quantized = make().eval()
            quantized.load_state_dict(float_model.state_dict())
            calib = [torch.randn(input_shape)]
            quanta.quantize(quantized, preset, calib=calib)
            measured, theory = quanta.model_nbytes(quantized), _theory(float_model, quantized)
            worst = max(worst, abs(measured / theory - 1))
            print(
                f"| {title} | {preset} | {measured:,} | {theory:,.0f} | {measured / theory:.4f} | "
                f"{quanta.model_nbytes(float_model) / measured:.2f}x |"
            )
    print(f"\nLargest deviation from theory: {100 * worst:.2f}% (target: within 2%)")
    print(f"Command: python benchmarks/bench_memory.py{' --quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
