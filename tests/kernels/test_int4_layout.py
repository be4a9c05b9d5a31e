"""torch's CPU int4-packed layout: our conversion equals torch's converter, and converts back exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quanta.kernels.int4_layout import Int4Layout, from_torch_int4pack, to_torch_int4pack, torch_layout
from quanta.primitives.packing import pack

CANDIDATES = [Int4Layout(64, True), Int4Layout(32, True), Int4Layout(32, False)]
ROOT = Path(__file__).resolve().parents[2]


def _codes(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)


@pytest.mark.parametrize("n", [16, 32, 48, 64, 80, 112, 176, 256])
@pytest.mark.parametrize("k", [32, 96, 256])
def test_conversion_equals_torch_converter(n: int, k: int) -> None:
    layout = torch_layout()
    assert layout is not None  # this CPU build has the op and one of the known layouts
    u = _codes(n, k)
    expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 2).reshape(-1)
    canonical = pack(u, 4)  # unsigned codes, first in the low nibble
    assert torch.equal(to_torch_int4pack(canonical, n, k, layout, signed=False), expected)
    # Signed codes q = u - 8 packed as two's complement nibbles land on the same torch bytes.
    assert torch.equal(to_torch_int4pack(pack(u - 8, 4, signed=True), n, k, layout, signed=True), expected)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(blocks=st.integers(1, 12), k_units=st.integers(1, 8), variant=st.integers(0, 2), signed=st.booleans())
def test_conversion_round_trips_exactly(blocks: int, k_units: int, variant: int, signed: bool) -> None:
    n, k = 16 * blocks, 32 * k_units
    canonical = pack(_codes(n, k, seed=blocks * 100 + k_units), 4)
    layout = CANDIDATES[variant]
    packed = to_torch_int4pack(canonical, n, k, layout, signed)
    assert packed.shape == canonical.shape and packed.dtype == torch.uint8
    assert torch.equal(from_torch_int4pack(packed, n, k, layout, signed), canonical)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [("avx2", "Int4Layout(block_n=32, paired=True)"), ("default", "Int4Layout(block_n=32, paired=False)")],
)
def test_probe_finds_the_layout_of_another_cpu_capability(capability: str, expected: str) -> None:
    # torch picks its int4 layout by the CPU capability it dispatches to; a fresh process forced to another one
    # must detect that layout and still match torch's converter.
    script = (
        "import torch\n"
        "from quanta.kernels.int4_layout import torch_layout, to_torch_int4pack\n"
        "from quanta.primitives.packing import pack\n"
        "u = torch.randint(0, 16, (80, 64), dtype=torch.int32)\n"
        "layout = torch_layout()\n"
        "ok = torch.equal(to_torch_int4pack(pack(u, 4), 80, 64, layout, False),\n"
        "                 torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 2).reshape(-1))\n"
        "print(layout, ok)\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{expected} True"
