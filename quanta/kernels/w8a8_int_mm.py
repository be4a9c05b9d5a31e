"""W8A8 linear: int8 activations x int8 weights -> int32 through ``torch._int_mm``, scales applied after.

Applies to symmetric per-channel int8 weights (``int8:ch``) with int8 per-tensor activations, either calibrated
(``w8a8``: stored ``act_scale`` / ``act_zero``, symmetric or asymmetric) or per token at run time (``w8a8-dyn``:
symmetric). The kernel quantizes the input itself, with the same formula as the reference path
(:meth:`~quanta.nn.base.QuantModule.quantize_input`), so both see the same integer codes; the weight is read
zero-copy from the packed codes as ``w[N, K].t()`` (the column-major view ``_int_mm`` is fastest with).

    y[m, n] = s_x[m] * s_w[n] * (sum_k q_x[m, k] q_w[n, k] - z_x * rowsum_n(q_w)) + b[n]

The zero-point term needs ``rowsum(q_w)``: an int32 ``[N]`` buffer derived from the codes (``kernel_rowsum``,
counted by ``model_nbytes``, not saved). Inputs may be fp32 or bf16; the output has the input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from quanta.kernels.base import Kernel, register_kernel
from quanta.primitives.affine import int_range, symmetric_scale
from quanta.scheme import QScheme


def _applies(scheme: QScheme, shape: torch.Size) -> bool:
    return (
        scheme.format == "int8"
        and scheme.granularity == "channel"
        and scheme.mode == "sym"
        and len(shape) == 2
        and hasattr(torch, "_int_mm")
    )


def int8_activation(act: QScheme | None, dynamic: bool) -> bool:
    """W8A8 activation rule: int8 per tensor, calibrated (sym or asym) or per token (sym)."""
    if act is None or act.format != "int8" or act.granularity != "tensor":
        return False
    return act.mode == "sym" if dynamic else act.mode in ("sym", "asym")


def input_scale(module: Any, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
    """The input's ``(scale, zero point)`` as :meth:`~quanta.nn.base.QuantModule.quantize_input` uses them:
    per token ``(M, 1)`` and 0 when dynamic (symmetric signed codes), the calibrated scalars otherwise."""
    if module.act_dynamic:
        qmin, qmax = int_range(8, True, module.act_scheme.narrow)
        return symmetric_scale(flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True), qmin, qmax), 0
    return module.act_scale.float(), module.act_zero


def scaled_output(acc: torch.Tensor, scale: torch.Tensor, module: Any, x: torch.Tensor) -> torch.Tensor:
    """``sum_k (q_x - z_x) q_w`` ``(M, N)`` back to the layer's output: times ``s_x * s_w``, plus the bias, in
    ``x``'s dtype and leading shape (shared by the W8A8 linear kernels)."""
    out_features = module.weight_shape[0]
    y = acc.float().mul_(scale * module.weight_scale.float().reshape(1, out_features))
    if module.bias is not None:
        y += module.bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _weight(module: Any) -> torch.Tensor:
    out_features, in_features = module.weight_shape
    return module.weight_codes.view(torch.int8).view(out_features, in_features)


def _prepare(module: Any) -> dict[str, torch.Tensor]:
    if module.act_dynamic:  # symmetric per token: no zero point, no correction
        return {}
    return {"rowsum": _weight(module).sum(dim=1, dtype=torch.int32)}  # (N,)


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantLinear, raw (unquantized) input
    in_features = module.weight_shape[1]
    qmin, qmax = int_range(8, True, module.act_scheme.narrow)
    flat = x.reshape(-1, in_features).float()  # (M, K)
    scale, zero = input_scale(module, flat)
    # The reference path's codes: clamp(round(x * (1 / s)) + z), computed the same way in fp32.
    codes = (flat * (1.0 / scale)).round_().add_(zero).clamp_(qmin, qmax).to(torch.int8)
    acc = torch._int_mm(codes, _weight(module).t())  # (M, N) int32
    if not module.act_dynamic:
        acc -= zero * module.kernel_rowsum
    return scaled_output(acc, scale, module, x)


W8A8_INT_MM = register_kernel(
    Kernel(
        "w8a8_int_mm",
        "linear",
        _applies,
        (torch.float32, torch.bfloat16),
        _run,
        activation=int8_activation,
        quantizes_input=True,
        prepare=_prepare,
    )
)
