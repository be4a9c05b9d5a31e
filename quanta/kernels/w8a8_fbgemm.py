"""W8A8 linear through fbgemm (torch's x86 quantized engine), the packed weight held as the only copy.

Same modules and same integers as :mod:`quanta.kernels.w8a8_int_mm` (int8:ch weights, int8 per-tensor inputs,
calibrated or per token), but the int8 GEMM runs on fbgemm's pre-packed weight: measured about 1.7x faster than
``torch._int_mm`` at batch 64 and as fast at batch 1. The module keeps that packed object *instead of* its codes
buffer (``torch.ops.quantized.linear_unpack`` returns the codes exactly, so ``state_dict`` and files still hold
the canonical stream). It has priority over ``w8a8_int_mm`` where both apply.

One call, for a raw input ``x``:

1. ``x' = x * (1 / s_x)`` in fp32, exactly as the reference path computes it (per token, or the calibrated scale);
2. fbgemm quantizes ``x'`` with scale 1 and zero point ``z_x + 128`` (uint8 ``u = q + 128``, the same codes
   ``q = clamp(round(x') + z_x, -128, 127)``), multiplies by the int8 weight (packed with scale 1, zero 0) and
   returns ``sum_k (u - z_x - 128) q_w`` as fp32: the zero-point correction is fbgemm's column offsets;
3. ``y = that * s_x * s_w[n] + b``.

Memory: fbgemm pads the packed matrix to its cache blocks (K to 512 or 256 rows, N to 48, 32 or 8 columns by
instruction set) and keeps int32 column offsets; :func:`packed_nbytes` computes those bytes for ``model_nbytes``.
The kernel applies only where that padding costs at most 1% (e.g. not for in_features = 11008, padded to 11264),
keeping models within the 2% memory budget; other shapes use ``w8a8_int_mm``. Narrow-range input schemes
(``[-127, 127]``) are left to ``w8a8_int_mm`` too, since fbgemm clamps to the full byte. On CPUs without VNNI
(AVX2 only) fbgemm sums pairs of u8 x s8 products in saturating int16 and gives wrong results for full-range
inputs, so there the kernel does not apply and ``w8a8_int_mm`` (exact on every CPU) serves these modules.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from quanta.kernels.base import Kernel, cpu_multiplies_int8_exactly, register_kernel
from quanta.kernels.w8a8_int_mm import input_scale, int8_activation, scaled_output
from quanta.scheme import QScheme

MAX_PADDING = 0.01  # packed bytes may exceed N * K by at most this fraction


@functools.cache
def _available() -> bool:
    return (
        "fbgemm" in torch.backends.quantized.supported_engines
        and hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32")
        and cpu_multiplies_int8_exactly()  # without VNNI fbgemm's int16 pair sums saturate
    )


def _blocking() -> tuple[int, int]:
    """fbgemm's (K, N) cache blocks for int8 B matrices on this CPU (fbgemm's PackingTraits)."""
    if torch.cpu._is_vnni_supported() and torch.cpu._is_avx512_supported():
        return 512, 48
    if torch.cpu._is_avx512_supported():
        return 256, 32
    return 512, 8


def packed_nbytes(shape: torch.Size) -> int:
    """Bytes fbgemm holds for an ``(N, K)`` int8 weight: the padded packed matrix, int32 column offsets, and the
    per-tensor scale and zero point."""
    out_features, in_features = shape
    k_block, n_block = _blocking()
    rows = -(-in_features // k_block) * k_block
    cols = -(-out_features // n_block) * n_block
    return rows * cols + 4 * out_features + 8


def _layout_nbytes(packed: Any, shape: torch.Size) -> int:
    return packed_nbytes(shape)


def _applies(scheme: QScheme, shape: torch.Size) -> bool:
    if scheme.format != "int8" or scheme.granularity != "channel" or scheme.mode != "sym" or len(shape) != 2:
        return False
    return _available() and packed_nbytes(shape) <= (1 + MAX_PADDING) * shape.numel()


def _activation(act: QScheme | None, dynamic: bool) -> bool:
    return int8_activation(act, dynamic) and act is not None and not act.narrow


@contextlib.contextmanager
def _fbgemm_engine() -> Iterator[None]:
    # linear_prepack packs for the active quantized engine; fbgemm's packed class has the fp32-output op.
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _to_layout(codes: torch.Tensor, shape: torch.Size, scheme: QScheme) -> Any:
    with warnings.catch_warnings():  # torch flags quantized tensor creation as deprecated; fbgemm still needs it
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
        weight = torch._make_per_tensor_quantized_tensor(codes.view(torch.int8).view(shape), 1.0, 0)
    with _fbgemm_engine():
        return torch.ops.quantized.linear_prepack(weight, None)


def _from_layout(packed: Any, shape: torch.Size, scheme: QScheme) -> torch.Tensor:
    weight, _ = torch.ops.quantized.linear_unpack(packed)
    return weight.int_repr().reshape(-1).view(torch.uint8)  # int8 codes are their own bytes


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantLinear holding fbgemm's packed weight
    in_features = module.weight_shape[1]
    flat = x.reshape(-1, in_features).float()  # (M, K)
    scale, zero = input_scale(module, flat)
    scaled = flat * (1.0 / scale)  # the reference path's x * (1 / s), rounded by fbgemm with scale 1
    acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        scaled, 1.0, int(zero) + 128, module.kernel_weight
    )  # (M, N): sum_k (q_x - z_x) q_w as fp32
    return scaled_output(acc, scale, module, x)


W8A8_FBGEMM = register_kernel(
    Kernel(
        "w8a8_fbgemm",
        "linear",
        _applies,
        (torch.float32, torch.bfloat16),
        _run,
        activation=_activation,
        quantizes_input=True,
        to_layout=_to_layout,
        from_layout=_from_layout,
        layout_nbytes=_layout_nbytes,
        priority=1,  # before w8a8_int_mm where both apply
    )
)
