"""Grouped int4 weight-only linear through torch's ``_weight_int4pack_mm_for_cpu`` (CPU; fast with bf16 inputs).

Applies to 4-bit integer weights in groups of 32, 64, 128 or 256 along ``in_features`` (``int4:gN:asym`` as in
the ``w4a16-gN`` presets, ``int4:gN`` symmetric, and the ``uint4`` equivalents) whose ``out_features`` is a
multiple of 16 and whose ``in_features`` is a multiple of the group. The module holds its codes in torch's
packed layout (:mod:`quanta.kernels.int4_layout`, the same number of bytes): one copy, converted back to the
canonical stream for ``state_dict`` and files.

torch decodes ``(u - 8) * scale + zero`` with ``u`` the unsigned nibble; quanta's ``(q - z) * s`` with signed
``q = u - 8`` (or unsigned ``q = u``) is the same line with ``zero = (c - z) * s``, ``c`` = 0 for signed codes and
8 for unsigned ones, in a bf16 ``[K / g, N, 2]`` table.

- **bf16 scales** (``sbf16``, the ``w4a16-gN`` presets for N >= 128) whose table costs at most
  :data:`TABLE_BUDGET` more bytes than the scale and zero point it replaces (asymmetric groups of 128 or 256:
  4 bytes a group instead of 3, +1.5% at g128; symmetric groups of 256): the module holds the table **instead
  of** its ``weight_scale`` / ``weight_zero`` buffers, one copy, converted back exactly (see
  :func:`_params_from_layout`) for ``state_dict``, ``qweight`` and files.
- Otherwise (fp16/fp32 scales, which do not survive a cast to bf16, or smaller groups, where the table's extra
  bytes would break the memory budget) the table is rebuilt from the stored parameters on every call: about
  +50% on a 4096x4096 layer at batch 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from quanta.kernels.base import Kernel, register_kernel
from quanta.kernels.int4_layout import from_torch_int4pack, to_torch_int4pack, torch_layout
from quanta.scheme import QScheme

GROUP_SIZES = (32, 64, 128, 256)
TABLE = "scales_and_zeros"  # the held table's name: buffer ``weight_scales_and_zeros``
TABLE_BYTES = 4  # a group's (scale, zero) pair in the bf16 table
# The project's memory budget: a model within 2% of its schemes' theoretical bytes. Holding the table must not
# cost more than that on any weight.
TABLE_BUDGET = 0.02


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


def holds_table(scheme: QScheme) -> bool:
    """Whether a module with this (accepted) scheme holds torch's table instead of its scale and zero point: the
    scales are bf16 (the table's scale column is then the scale itself) and the table's extra bytes per group stay
    within :data:`TABLE_BUDGET` of the group's stored bytes (codes plus parameters)."""
    if scheme.scale_dtype != "bf16" or scheme.group_size is None:
        return False
    params = sum(dtype.itemsize for _, dtype in scheme.fmt.param_spec(scheme).values())
    group_bytes = scheme.group_size * scheme.bits / 8 + params
    return TABLE_BYTES - params <= TABLE_BUDGET * group_bytes


def _table(scale: torch.Tensor, zero: torch.Tensor | None, scheme: QScheme, dtype: torch.dtype) -> torch.Tensor:
    """torch's ``[K / g, N, 2]`` table of ``(scale, zero)`` from ``scale`` and ``zero`` ``(N, K / g)``, in ``dtype``."""
    s = scale.float()
    if zero is None:  # symmetric: torch's u - 8 already puts the zero point where the scheme has it
        z = torch.zeros_like(s)
    else:
        # zero = (c - z) * s with c = 0 for signed codes (u = q + 8) and 8 for unsigned ones (u = q). The product is
        # exact in fp32 (a 4-bit integer times an 8- or 11-bit significand), so the cast to dtype rounds once.
        shift = zero if scheme.fmt.signed_codes else zero.float() - 8
        z = torch.mul(s, shift).neg_()
    # One stack of the two transposed views, then one cast: measured the fastest way to build the table.
    return torch.stack([s.t(), z.t()], dim=-1).to(dtype)


def scales_and_zeros(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """torch's ``[K / g, N, 2]`` table of ``(scale, zero)`` for the module's weight, in ``dtype``: the table the
    module holds when it holds one (bf16), else built from its stored scale and zero point."""
    held = getattr(module, f"weight_{TABLE}", None)
    if held is not None and held.dtype == dtype:
        return held
    params = module.canonical_params()
    return _table(params["scale"], params.get("zero"), module.weight_scheme, dtype)


def _params_from_layout(
    held: Mapping[str, torch.Tensor], shape: torch.Size, scheme: QScheme
) -> dict[str, torch.Tensor]:
    """The canonical scale (and zero point) from the held bf16 table, exactly.

    The scale column is the bf16 scale itself. The zero column holds ``t = bf16(d * s)`` with the integer
    ``d = c - z``, ``|d| <= 15`` for any 4-bit zero point (``<= 8`` in range). ``d * s`` is exact in fp32 and, when
    it is a normal number, the cast to bf16 (8 significant bits) rounds it by a relative ``|e| <= 2**-8``; the fp32
    division adds ``|e'| <= 2**-24``: ``t / s = d (1 + e)(1 + e')``, so ``|t / s - d| <= 15 * (2**-8 + 2**-23)``,
    under 0.06, and rounding gives ``d`` exactly (``d = 0`` gives ``t = 0``). This holds for every normal, finite
    scale with ``15 * |s|`` finite (bf16 shares fp32's exponent range, so ``|d * s| >= |s|`` is normal too);
    :func:`_params_to_layout` checks the round trip on the actual values and keeps the canonical buffers otherwise
    (zero, subnormal or huge scales).
    """
    table = held[TABLE]  # (K / g, N, 2) bf16
    scale = table[..., 0].t().contiguous()  # (N, K / g)
    if scheme.mode != "asym":
        return {"scale": scale}
    c = 0 if scheme.fmt.signed_codes else 8
    d = torch.round(table[..., 1].t().float() / scale.float())
    zero_dtype = scheme.fmt.param_spec(scheme)["zero"][1]
    return {"scale": scale, "zero": (c - d).to(zero_dtype)}


def _params_to_layout(
    params: Mapping[str, torch.Tensor], shape: torch.Size, scheme: QScheme
) -> dict[str, torch.Tensor] | None:
    """The bf16 table that replaces the stored scale and zero point, or ``None`` to keep them (see
    :func:`holds_table`), also when the conversion back would not be exact for these values."""
    if not holds_table(scheme) or any(p.device.type != "cpu" for p in params.values()):
        return None
    held = {TABLE: _table(params["scale"], params.get("zero"), scheme, torch.bfloat16)}
    back = _params_from_layout(held, shape, scheme)
    exact = all(back[n].dtype == p.dtype and torch.equal(back[n], p) for n, p in params.items())
    return held if exact else None


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
        params_to_layout=_params_to_layout,
        params_from_layout=_params_from_layout,
    )
)
