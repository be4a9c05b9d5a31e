"""Error bounds for bf16 kernels, derived from bf16's precision rather than picked by hand.

bf16 keeps 8 significant bits, so one round-to-nearest changes a value by at most ``2**-8`` of itself. A bf16
kernel rounds some stored weight terms once (``R``: their magnitudes, per weight element) and accumulates in fp32:

    E = 2**-8 * (|x| @ R^T) + K * 2**-24 * (|x| @ (|W| + R)^T)

With a bias, the product is rounded to bf16 and the bias cast to bf16 before they are added:
``E += 2**-8 * (|x @ W^T| + E) + 2**-8 * |b|``. The output is rounded once more, so against the exact fp64 result

    |y - y_exact| <= E + 2**-8 * (|y_exact| + E)

- the reference path (bf16 ``F.linear`` on the dequantized weight) rounds each weight: ``R = |W|``;
- torch's int4 kernel decodes ``(u - 8) * scale + zero`` from a bf16 table: it rounds the scale column (the term
  ``|(u - 8) * s|``) only when the stored scale is not a bf16 value already (fp16/fp32 scales), and always the
  zero column ``zero = (c - z) * s`` (the term ``|(c - z) * s|``, asymmetric weights only; ``c`` = 0 for signed
  codes, 8 for unsigned ones): :func:`int4_table_terms`.
"""

from __future__ import annotations

import torch

from quanta.tensor import QTensor

BF16_UNIT = 2.0**-8
FP32_UNIT = 2.0**-24


def _per_element(param: torch.Tensor, k: int) -> torch.Tensor:
    return param.double().repeat_interleave(k // param.shape[1], dim=1)  # (N, K / g) -> (N, K)


def reference_terms(qt: QTensor) -> torch.Tensor:
    """``|W|`` per weight element, fp64 ``(N, K)``: what the bf16 reference path rounds."""
    return qt.dequantize().double().abs()


def int4_table_terms(qt: QTensor) -> torch.Tensor:
    """What torch's int4 kernel rounds per weight element, fp64 ``(N, K)`` (see the module docstring)."""
    codes = qt.unpacked_codes().double()  # (N, K): signed q (u = q + 8) or unsigned u
    signed = qt.scheme.fmt.signed_codes
    u_minus_8 = codes if signed else codes - 8
    stored = qt.params["scale"]
    scale = _per_element(stored, codes.shape[1])
    rounds = _per_element((stored.to(torch.bfloat16).double() != stored.double()).double(), codes.shape[1])
    terms = (u_minus_8 * scale).abs() * rounds  # the scale column: rounded only where s is not a bf16 value
    if "zero" in qt.params:
        c = 0.0 if signed else 8.0
        terms += ((c - _per_element(qt.params["zero"], codes.shape[1])) * scale).abs()
    return terms


def bf16_bound(
    x: torch.Tensor, rounded: torch.Tensor, qt: QTensor, exact: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The bound above for inputs ``x (..., K)``, rounded terms ``R (N, K)``, the weight, the exact output
    ``(..., N)`` and the bias (or ``None``)."""
    ax = x.double().abs()
    err = BF16_UNIT * (ax @ rounded.t()) + x.shape[-1] * FP32_UNIT * (ax @ (reference_terms(qt) + rounded).t())
    if bias is not None:
        product = (exact - bias.double()).abs()  # |x @ W^T|
        err = err + BF16_UNIT * (product + err) + BF16_UNIT * bias.double().abs()
    return err + BF16_UNIT * (exact.abs() + err)
