"""Uniform integer grids of any width 1..16: symmetric, asymmetric (integer zero point) and float-offset.

* ``sym``:  ``x_hat = (q - z0) * s`` with ``z0 = 0`` for signed formats (the midpoint ``2**(bits-1)`` for
  unsigned ones, as torch does) and the smallest ``s`` that does not clip: ``max(min(x,0)/qmin, max(x,0)/qmax)``
  relative to ``z0`` (see :mod:`quanta.primitives.affine`).
* ``asym``: ``x_hat = (q - z) * s``; the range is widened to include 0 and ``z`` is an integer code, so 0.0 is
  exact (needed for zero padding and ReLU outputs).
* ``fmin``: ``x_hat = (q - qmin) * s + m`` with a float minimum ``m`` (HQQ, GGUF Q4_1): every level lies in the data.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.formats.base import SCALE_DTYPES, Format, Params, int_storage_dtype, register_family
from quanta.primitives.affine import (
    affine_qparams,
    dequantize_affine,
    float_offset_qparams,
    int_range,
    quantize_affine,
    symmetric_scale,
    symmetric_zero,
)
from quanta.primitives.checks import check_bits

if TYPE_CHECKING:
    from quanta.scheme import QScheme


class IntegerFormat(Format):
    modes = ("sym", "asym", "fmin")
    roundings = ("rne", "sr")
    narrowable = True

    def __init__(self, bits: int, signed: bool) -> None:
        self.bits = check_bits(bits, 1, 16, what=f"{'int' if signed else 'uint'} bit width")
        self.signed_codes = signed
        self.name = f"{'' if signed else 'u'}int{bits}"
        self.summary = f"{'signed' if signed else 'unsigned'} {bits}-bit integer"

    def qrange(self, scheme: QScheme) -> tuple[int, int]:
        return int_range(self.bits, self.signed_codes, scheme.narrow)

    def _sym_zero(self) -> int:
        return symmetric_zero(self.bits, self.signed_codes)

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        if scheme.mode == "asym":
            return {"scale": ((), dtype), "zero": ((), int_storage_dtype(self.bits, self.signed_codes))}
        if scheme.mode == "fmin":
            return {"scale": ((), dtype), "offset": ((), dtype)}
        return {"scale": ((), dtype)}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        qmin, qmax = self.qrange(scheme)
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        if scheme.mode == "asym":
            scale, zero = affine_qparams(x.amin(-1), x.amax(-1), qmin, qmax, dtype)
            return {"scale": scale, "zero": zero.to(int_storage_dtype(self.bits, self.signed_codes))}
        if scheme.mode == "fmin":
            scale, offset = float_offset_qparams(x.amin(-1), x.amax(-1), qmin, qmax, dtype)
            return {"scale": scale, "offset": offset}
        z0 = self._sym_zero()
        return {"scale": symmetric_scale(x.amin(-1), x.amax(-1), qmin - z0, qmax - z0, dtype)}

    def _placement(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor | None, torch.Tensor | int]:
        """``(offset, zero)`` of the block: ``x_hat = (q - zero) * scale (+ offset)``, broadcastable to it."""
        if scheme.mode == "asym":
            return None, params["zero"].unsqueeze(-1).int()
        if scheme.mode == "fmin":
            return params["offset"].unsqueeze(-1).float(), self.qrange(scheme)[0]
        return None, self._sym_zero()

    def check_params(self, params: Params, scheme: QScheme) -> str | None:
        qmin, qmax = self.qrange(scheme)
        if not bool((params["scale"] > 0).all()):
            return "scales must be positive"
        if "zero" in params and not bool(((params["zero"] >= qmin) & (params["zero"] <= qmax)).all()):
            return f"zero points must lie in [{qmin}, {qmax}]"
        return None

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        qmin, qmax = self.qrange(scheme)
        offset, zero = self._placement(params, scheme)
        shifted = x if offset is None else x - offset
        return quantize_affine(shifted, params["scale"].unsqueeze(-1), zero, qmin, qmax, scheme.rounding, generator)

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        offset, zero = self._placement(params, scheme)
        values = dequantize_affine(codes, params["scale"].unsqueeze(-1), zero)
        return values if offset is None else values.add_(offset)

    def fused_fake_quantize(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor | None:
        # torch's per-channel kernel computes exactly our sym/asym formula and torch's gradient rule, in one pass;
        # each group is one "channel" of the (rows * n, g) view.
        # fp16 steps can saturate at 65504, leaving |x / step| large enough to overflow the kernel's int64 codes.
        if (
            scheme.rounding != "rne"
            or scheme.mode == "fmin"
            or scheme.scale_dtype == "fp16"
            or x.dtype != torch.float32
        ):
            return None
        qmin, qmax = self.qrange(scheme)
        rows, n, g = x.shape
        scale = params["scale"].float().reshape(-1)
        if scheme.mode == "asym":
            zero = params["zero"].to(torch.int32).reshape(-1)
        else:
            zero = torch.full_like(scale, self._sym_zero(), dtype=torch.int32)
        out = torch.fake_quantize_per_channel_affine(x.reshape(rows * n, g), scale, zero, 0, qmin, qmax)
        return out.reshape(rows, n, g)

    def inside(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        # torch's fake-quantize rule: the unclamped code round(x / s) + z lies in [qmin, qmax].
        qmin, qmax = self.qrange(scheme)
        offset, zero = self._placement(params, scheme)
        shifted = x if offset is None else x - offset
        raw = torch.round(shifted * (1.0 / params["scale"].unsqueeze(-1).float())) + zero
        return (raw >= qmin) & (raw <= qmax)

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = self.qrange(scheme)
        ones = torch.ones_like(params["scale"], dtype=torch.int32).unsqueeze(-1)
        return self.decode(ones * qmin, params, scheme), self.decode(ones * qmax, params, scheme)

    def code_values(self, scheme: QScheme) -> torch.Tensor:
        qmin, qmax = self.qrange(scheme)
        return torch.arange(qmin, qmax + 1, dtype=torch.int32)


@register_family(
    r"(u?)int([0-9]{1,4})", ("int8", "int4", "uint8", "int3"), "integers of 1..16 bits, signed or unsigned"
)
def _integer(match: re.Match[str]) -> Format:
    return IntegerFormat(int(match.group(2)), signed=match.group(1) == "")
