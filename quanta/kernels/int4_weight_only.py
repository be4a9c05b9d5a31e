"""Grouped int4 weight-only linear through torch's ``_weight_int4pack_mm_for_cpu`` (CPU; fast with bf16 inputs).

Applies to 4-bit integer weights in groups of 32, 64, 128 or 256 along ``in_features`` (``int4:gN:asym`` as in
the ``w4a16-gN`` presets, ``int4:gN`` symmetric, and the ``uint4`` equivalents) whose ``out_features`` is a
multiple of 16 and whose ``in_features`` is a multiple of the group. The module holds its codes in torch's
packed layout (:mod:`quanta.kernels.int4_layout`, the same number of bytes): one copy, converted back to the
canonical stream for ``state_dict`` and files.

torch decodes ``(u - 8) * scale + zero`` with ``u`` the unsigned nibble; quanta's ``(q - z) * s`` with signed
``q = u - 8`` (or unsigned ``q = u``) is the same line with ``zero = (c - z) * s``, ``c`` = 0 for signed codes and
8 for unsigned ones. That ``[K / g, N, 2]`` table is rebuilt per call from the stored fp16 scales and int zero
points: caching it would cost 4 more bytes a group, beyond the 2% memory budget, and it cannot replace the stored
parameters (fp16 scales do not survive a cast to bf16). Measured cost: about +50% on a 4096x4096 layer at batch 1.
"""

from __future__ import annotations

from typing import Any

import torch

from quanta.kernels.base import Kernel, register_kernel
from quanta.kernels.int4_layout import from_torch_int4pack, to_torch_int4pack, torch_layout
from quanta.scheme import QScheme

GROUP_SIZES = (32, 64, 128, 256)


def _applies(scheme: QScheme, shape: torch.Size) -> bool:
    if scheme.format not in ("int4", "uint4") or scheme.granularity != "group" or scheme.mode not in ("sym", "asym"):
        return False
    if len(shape) != 2 or scheme.group_size not in GROUP_SIZES:
        return False
    out_features, in_features = shape
    return (
        out_features % 16 == 0
        and in_features % int(scheme.group_size) == 0
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and torch_layout() is not None
    )


def _to_layout(codes: torch.Tensor, shape: torch.Size, scheme: QScheme) -> torch.Tensor:
    layout = torch_layout()
    assert layout is not None  # _applies checked it
    return to_torch_int4pack(codes, shape[0], shape[1], layout, scheme.fmt.signed_codes)


def _from_layout(codes: torch.Tensor, shape: torch.Size, scheme: QScheme) -> torch.Tensor:
    layout = torch_layout()
    assert layout is not None
    return from_torch_int4pack(codes, shape[0], shape[1], layout, scheme.fmt.signed_codes)


def scales_and_zeros(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """torch's ``[K / g, N, 2]`` table of ``(scale, zero)`` for the module's weight, in ``dtype``."""
    scheme = module.weight_scheme
    scale = module.weight_scale.float()  # (N, K / g)
    if scheme.mode == "asym":
        # zero = (c - z) * s with c = 0 for signed codes (u = q + 8) and 8 for unsigned ones (u = q).
        shift = module.weight_zero if scheme.fmt.signed_codes else module.weight_zero.float() - 8
        zero = torch.mul(scale, shift).neg_()
    else:  # symmetric: torch's u - 8 already puts the zero point where the scheme has it
        zero = torch.zeros_like(scale)
    # One stack of the two transposed views, then one cast: measured the fastest way to build the table.
    return torch.stack([scale.t(), zero.t()], dim=-1).to(dtype)


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantLinear holding torch's layout
    out_features, in_features = module.weight_shape
    packed = module.weight_codes.view(out_features, in_features // 2)
    flat = x.reshape(-1, in_features).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        flat, packed, module.weight_scheme.group_size, scales_and_zeros(module, x.dtype)
    )
    if module.bias is not None:
        y = y + module.bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], out_features)


INT4_WEIGHT_ONLY = register_kernel(
    Kernel(
        "int4_weight_only",
        "linear",
        _applies,
        (torch.bfloat16,),
        _run,
        to_layout=_to_layout,
        from_layout=_from_layout,
    )
)
