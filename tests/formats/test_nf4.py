import torch

import quanta
from quanta.formats.nf4 import nf4_levels

# The table published with QLoRA (bitsandbytes), used here only as the reference.
QLORA_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def test_levels_equal_qlora_table() -> None:
    assert torch.allclose(nf4_levels().double(), torch.tensor(QLORA_NF4, dtype=torch.float64), atol=1e-7, rtol=0)


def test_nf4_maps_to_nearest_level_times_absmax(gen: torch.Generator) -> None:
    x = torch.randn(4, 64, generator=gen)
    qt = quanta.quantize_tensor(x, "nf4:g64")
    absmax = x.abs().amax(1, keepdim=True)
    grid = torch.tensor(QLORA_NF4) * absmax.unsqueeze(-1)  # (4, 1, 16)
    nearest = (x.unsqueeze(-1) - grid).abs().min(-1).values
    assert torch.allclose((x - qt.dequantize()).abs(), nearest, atol=1e-6)
    assert qt.unpacked_codes()[x == 0].numel() == 0 or torch.all(qt.unpacked_codes()[x == 0] == 7)
