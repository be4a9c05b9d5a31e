"""Error bounds for bf16 kernels, derived from bf16's precision rather than picked by hand.

bf16 keeps 8 significant bits, so one round-to-nearest changes a value by at most ``2**-8`` of itself. A bf16
kernel rounds each stored weight term (scale, and the zero term ``-z * s`` for grouped int4) once, accumulates
in fp32 and rounds the output once, so against the exact fp64 product

    |y - y_exact| <= 2**-8 * (|x| @ T^T) + 2**-8 * |y_exact| + K * 2**-24 * (|x| @ T^T)

with ``T = |q * s| + |z * s|`` the magnitudes of the terms that get rounded (``q`` the codes relative to the
zero point torch's kernel uses, ``z * s`` the zero term; ``T = |W|`` for symmetric weights).
"""

from __future__ import annotations

import torch

from quanta.tensor import QTensor

BF16_UNIT = 2.0**-8
FP32_UNIT = 2.0**-24


def weight_terms(qt: QTensor) -> torch.Tensor:
    """``|q * s| + |z * s|`` per weight element, fp64 ``(N, K)``: what a bf16 kernel rounds."""
    codes = qt.unpacked_codes().double()  # (N, K)
    k = codes.shape[1]
    group = k // qt.params["scale"].shape[1]
    scale = qt.params["scale"].double().repeat_interleave(group, dim=1)
    zero = qt.params["zero"].double().repeat_interleave(group, dim=1) if "zero" in qt.params else 0.0
    return (codes * scale).abs() + (zero * scale).abs()


def bf16_bound(x: torch.Tensor, terms: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """The bound above for inputs ``x (..., K)``, ``terms (N, K)`` and the exact output ``(..., N)``."""
    spread = x.double().abs() @ terms.t()
    return (BF16_UNIT + x.shape[-1] * FP32_UNIT) * spread + BF16_UNIT * exact.abs()
