"""Weight SQNR of ``q4_k:g256:sf16`` (llama.cpp Q4_K, 4.5 bits a weight) against the 4-bit group schemes GGUF
also holds losslessly (``int4:g32:fmin:sf16`` = Q4_1 at 5 bits, ``int4:g32:sf16`` = Q4_0 at 4.5 bits), against
the outward-rounding Q4_K requantizer of ``quanta.export.gguf_codec.requantize``, and against llama.cpp's own
``quantize_row_q4_K_ref`` when llama-cpp-python's ``libggml-base`` is installed (called through ctypes).

Weights: every 2-D weight of stories260K (``../shared/data/stories260K_hf``; its rows are 64 or 172 long, so the
weights are flattened and cut into rows of 256, the first ``256 * k`` values), plus seeded Gaussian and
Student-t (3 degrees of freedom, heavy tails) matrices of 1024 x 1024 (``--quick``: 64 x 1024).
SQNR = ``10 log10(sum w^2 / sum (w - w_hat)^2)`` over the whole set; ``vs Q4_1`` is the difference in dB.

    .venv/bin/python benchmarks/bench_kquant.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import quanta
from quanta.export.gguf_codec import requantize

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _ggml_q4_k() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """llama.cpp's reference Q4_K quantizer + gguf's dequantizer, or None when either is missing."""
    try:
        import gguf
        import llama_cpp
    except ImportError:
        return None
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
    if not libs:
        return None
    lib = ctypes.CDLL(str(libs[0]))
    lib.quantize_row_q4_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def run(w: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(w.numpy(), dtype=np.float32).reshape(-1)
        out = np.zeros(x.size // 256 * 144, dtype=np.uint8)
        lib.quantize_row_q4_K_ref(x.ctypes.data, out.ctypes.data, x.size)
        values = gguf.quants.dequantize(out, gguf.GGMLQuantizationType.Q4_K)
        return torch.from_numpy(values).reshape(w.shape)

    return run


def _stories(data: Path) -> torch.Tensor | None:
    path = data / "stories260K_hf" / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    flat = torch.cat([t.float().reshape(-1) for t in load_file(str(path)).values() if t.dim() == 2])
    return flat[: flat.numel() // 256 * 256].reshape(-1, 256)


def _sqnr(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return 10 * math.log10(float(w.double().pow(2).sum() / (w.double() - w_hat.double()).pow(2).sum()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true", help="64 x 1024 synthetic matrices")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = 64 if args.quick else 1024
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # StudentT samples from the global generator
    sets = {
        "gaussian": torch.randn(rows, 1024, generator=g) * 0.02,
        "student-t3": torch.distributions.StudentT(3.0).sample((rows, 1024)) * 0.02,
    }
    stories = _stories(args.data)
    if stories is not None:
        sets = {"stories260K": stories, **sets}

    def scheme(text: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
        def run(w: torch.Tensor) -> tuple[torch.Tensor, float]:
            qt = quanta.quantize_tensor(w, text)
            return qt.dequantize(), qt.bits_per_value

        return run

    def requantized(w: torch.Tensor) -> tuple[torch.Tensor, float]:
        return requantize(w, "Q4_K").dequantize(), 144 * 8 / 256  # written as Q4_K blocks

    methods: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, float]]] = {
        "q4_k:g256:sf16": scheme("q4_k:g256:sf16"),
        "int4:g32:fmin:sf16 (Q4_1)": scheme("int4:g32:fmin:sf16"),
        "int4:g32:sf16 (Q4_0)": scheme("int4:g32:sf16"),
        "requantize(w, 'Q4_K')": requantized,
    }
    ggml = _ggml_q4_k()
    if ggml is not None:
        methods["llama.cpp quantize_row_q4_K_ref"] = lambda w: (ggml(w), 144 * 8 / 256)
    print(f"{'weights':<13} {'scheme':<34} {'bits/w':>6} {'SQNR dB':>8} {'vs Q4_1 dB':>10}")
    for name, w in sets.items():
        results = {label: fn(w) for label, fn in methods.items()}
        ref = _sqnr(w, results["int4:g32:fmin:sf16 (Q4_1)"][0])
        for label, (w_hat, bits) in results.items():
            value = _sqnr(w, w_hat)
            print(f"{name:<13} {label:<34} {bits:>6.2f} {value:>8.2f} {value - ref:>+10.2f}")
    if ggml is None:
        print("(llama-cpp-python not installed: no llama.cpp reference row)")
    print(f"Command: .venv/bin/python benchmarks/bench_kquant.py{' --quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
