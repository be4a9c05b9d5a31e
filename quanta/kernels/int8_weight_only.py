"""int8 weight-only linear through torch's ``_weight_int8pack_mm`` (CPU; fast with bf16 activations).

Applies to symmetric per-channel int8 weights (``int8:ch``, full or narrow range): the packed codes are the
bytes of an int8 ``[out, in]`` matrix already, so the kernel reads them with no copy; only the ``out`` scales are
cast to the activation dtype per call.
"""

from __future__ import annotations

from typing import Any

import torch

from quanta.kernels.base import Kernel, register_kernel
from quanta.scheme import QScheme

ALIGNMENT = 64
"""Byte alignment the kernel's codes need; torch's allocator gives it, a safetensors file's offsets may not."""


def _applies(scheme: QScheme, shape: torch.Size) -> bool:
    return (
        scheme.format == "int8"
        and scheme.granularity == "channel"
        and scheme.mode == "sym"
        and scheme.rounding == "rne"
        and len(shape) == 2
        and shape[1] % 16 == 0  # torch's CPU kernel reads K in blocks of 16: other K crash the process
        and hasattr(torch.ops.aten, "_weight_int8pack_mm")
    )


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantLinear
    out_features, in_features = module.weight_shape
    weight = module.weight_codes.view(torch.int8).view(out_features, in_features)
    if weight.data_ptr() % ALIGNMENT:  # the kernel's vector loads crash on unaligned codes (e.g. a file's offsets)
        weight = weight.clone()
    scales = module.weight_scale.reshape(-1).to(x.dtype)
    flat = x.reshape(-1, in_features)
    y = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), weight, scales)
    if module.bias is not None:
        y = y + module.bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], out_features)


INT8_WEIGHT_ONLY = register_kernel(Kernel("int8_weight_only", "linear", _applies, (torch.bfloat16,), _run))
