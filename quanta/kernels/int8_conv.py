"""int8 x int8 convolutions through oneDNN's quantized conv (CPU with VNNI): the W8A8 conv kernel.

Applies to symmetric per-output-channel int8 weights (``int8:ch``, the ``w8a8`` preset's) when the module's
input is quantized statically per tensor to full-range 8-bit integers. One call, for a raw fp32 or bf16 input
``x`` (the output has the input's dtype):

1. quantize ``x`` with the calibrated ``act_scale`` / ``act_zero`` to ``quint8`` (torch's ``quantize_per_tensor``:
   the same rounding as quanta's reference fake-quantization, so the codes are equal); signed int8 codes ``q``
   become unsigned ``q + 128`` with the zero point moved by 128, the same grid. A bf16 input is widened to fp32
   first (exactly: the reference path quantizes ``x.float()`` too, so the codes are the same);
2. run ``onednn::qconv2d_pointwise`` on those bytes with the packed weight, the weight scales and the bias,
   accumulating in int32 and writing ``y = s_x * s_w[o] * acc + b`` straight to fp32, or rounded once to bf16
   for a bf16 input (no output scale to calibrate, no second rounding), channels-last like the input.

So an fp32 output equals the reference path (fake-quantized input, dequantized weight, float conv) up to the
float rounding of the reference's own sums, and a bf16 output is that result rounded once to bf16 (the bf16
reference path rounds the input values, the weight and the output to bf16, so it is the less exact of the two).
bf16 halves the bytes of every float op a model runs between its convolutions (ReLU, residual adds), which are
memory-bound at CNN batch sizes. Conv1d runs as a conv2d of height 1. Without VNNI, oneDNN's int8 path
multiplies in saturating int16 pairs, so the kernel applies only on CPUs that have it.

The weight: oneDNN reorders it into its own blocked layout (``qconv_prepack``, 50-1000 us, as long as a
batch-1 conv). Where that layout is no bigger than the codes (up to 1% padding: channels in multiples of the
block), the module holds the packed weight *instead of* its codes (:class:`PackedConvWeight`; ``to_dense``
gives the codes back exactly for ``state_dict`` and files). Elsewhere (e.g. 3 or 6 channels, padded to 4 or 16)
the module keeps its codes and the kernel packs them on every call: no measurable cost at ResNet-20's batch of
150, about 1.7x slower at batch 1, but the model stays within its memory budget.

The layout functions get the *grouped* weight shape ``(groups, out / groups, in / groups, *kernel)`` from the
conv module, since a grouped weight packs differently.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

from quanta.kernels.base import Kernel, cpu_multiplies_int8_exactly, register_kernel
from quanta.scheme import QScheme

__all__ = [
    "INT8_CONV1D",
    "INT8_CONV2D",
    "PackedConvWeight",
    "conv_on_codes",
    "input_grid",
    "int8_conv_available",
    "quantize_input_codes",
]

MAX_PADDING = 0.01  # the packed weight may exceed the codes by at most this fraction to be held instead of them


def int8_conv_available() -> bool:
    """True when torch has oneDNN's quantized conv ops and the CPU multiplies int8 without saturation (VNNI)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qconv2d_pointwise")
        and hasattr(torch.ops.onednn, "qconv_prepack")
        and hasattr(torch.ops.mkldnn, "_nbytes")
        and hasattr(torch, "quantize_per_tensor")  # deprecated in torch 2.13: the kernel goes when it does
        and cpu_multiplies_int8_exactly()
    )


def _prepack(codes: torch.Tensor, grouped: torch.Size) -> torch.Tensor:
    """oneDNN's packed int8 weight (an opaque mkldnn tensor) from the canonical codes of a grouped weight shape.

    The packing depends on the groups but not on strides, padding, dilation or scales (checked in the tests)."""
    groups, out_per_group = grouped[0], grouped[1]
    weight = codes.view(torch.int8).view(groups * out_per_group, *grouped[2:])  # (out, in / groups, *kernel)
    if weight.dim() == 3:  # conv1d: (out, in / groups, k) -> (out, in / groups, 1, k)
        weight = weight.unsqueeze(2)
    ones = torch.ones(weight.shape[0])
    dims = weight.dim() - 2
    return torch.ops.onednn.qconv_prepack(weight, ones, 1.0, 0, [1] * dims, [0] * dims, [1] * dims, groups, None)


class PackedConvWeight:
    """oneDNN's packed weight, held by a conv module instead of its codes (the only copy).

    Conv modules pickle and deep-copy their canonical codes instead; pickling this object alone goes through the
    codes too and packs again (mkldnn tensors have no storage to copy).
    """

    def __init__(self, packed: torch.Tensor, grouped: torch.Size) -> None:
        self.packed, self.grouped = packed, grouped

    @classmethod
    def from_codes(cls, codes: torch.Tensor, grouped: torch.Size) -> PackedConvWeight:
        return cls(_prepack(codes, grouped), grouped)

    def codes(self) -> torch.Tensor:
        """The canonical codes (1-D uint8, the int8 weight's bytes), exactly as packed."""
        return self.packed.to_dense().reshape(-1).view(torch.uint8)

    @property
    def nbytes(self) -> int:
        return int(torch.ops.mkldnn._nbytes(self.packed))

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedConvWeight.from_codes, (self.codes(), self.grouped))


def _to_layout(codes: torch.Tensor, grouped: torch.Size, scheme: QScheme) -> Any:
    held = PackedConvWeight.from_codes(codes, grouped)
    if held.nbytes > (1 + MAX_PADDING) * codes.numel():
        return codes  # the padding would cost memory: keep the codes and pack per call
    return held


def _from_layout(held: Any, grouped: torch.Size, scheme: QScheme) -> torch.Tensor:
    return held.codes() if isinstance(held, PackedConvWeight) else held


def _layout_nbytes(held: Any, grouped: torch.Size) -> int:
    return held.nbytes if isinstance(held, PackedConvWeight) else 0


def _applies(scheme: QScheme, shape: torch.Size, dims: int) -> bool:
    return (
        scheme.format == "int8"
        and scheme.granularity == "channel"
        and scheme.mode == "sym"
        and len(shape) == dims
        and int8_conv_available()
    )


def _applies_conv1d(scheme: QScheme, shape: torch.Size) -> bool:  # weight (out, in / groups, k)
    return _applies(scheme, shape, 3)


def _applies_conv2d(scheme: QScheme, shape: torch.Size) -> bool:  # weight (out, in / groups, kh, kw)
    return _applies(scheme, shape, 4)


def _activation(act: QScheme | None, dynamic: bool) -> bool:
    """Static per-tensor 8-bit integers on the full byte (the grid oneDNN's uint8 input covers exactly)."""
    return (
        act is not None
        and not dynamic
        and act.granularity == "tensor"
        and act.format in ("int8", "uint8")
        and not act.narrow
    )


def input_grid(module: Any) -> tuple[float, int]:
    """The module's calibrated input grid as oneDNN's uint8 input takes it: ``(scale, zero point)``; signed int8
    codes ``q`` become unsigned ``q + 128`` with the zero point moved by 128, the same grid."""
    return float(module.act_scale), int(module.act_zero) + (128 if module.act_scheme.fmt.signed_codes else 0)


def quantize_input_codes(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``x`` (fp32 or bf16, widened exactly) as uint8 codes on the grid, channels-last: torch's
    ``quantize_per_tensor``, the same rounding as quanta's reference fake-quantization, so the codes are equal."""
    with warnings.catch_warnings():  # torch 2.13 flags quint8 tensors as deprecated; this one lives for one call
        warnings.simplefilter("ignore", UserWarning)
        # One pass to fp32 channels-last (none for an fp32 channels-last input); bf16 -> fp32 is exact.
        layout = torch.channels_last if x.dim() == 4 else torch.contiguous_format
        qx = torch.quantize_per_tensor(x.to(dtype=torch.float32, memory_format=layout), scale, zero, torch.quint8)
    # The uint8 bytes of the quint8 tensor, zero-copy (the op takes plain uint8 with the qparams as arguments).
    return torch.empty(0, dtype=torch.uint8).set_(qx.untyped_storage(), qx.storage_offset(), qx.shape, qx.stride())


def conv_on_codes(
    module: Any,
    codes: torch.Tensor,
    x_scale: float,
    x_zero: int,
    out_scale: float | None,
    out_zero: int,
    accum: tuple[torch.Tensor, float, int] | None,
    relu: bool,
    dtype: torch.dtype,
    accum_owned: bool = False,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The conv of uint8 input ``codes`` (``(n, c, h, w)``, or ``(n, c, l)`` for conv1d) on the grid
    ``(x_scale, x_zero)``: in float ``dtype`` when ``out_scale`` is None, else as uint8 codes on the grid
    ``(out_scale, out_zero)`` (oneDNN requantizes the int32 sums once), with the ReLU and the sum of ``accum``'s
    uint8 codes (on their own grid) fused when asked; oneDNN writes that result over the accumulator, so it gets
    a copy unless ``accum_owned`` says nobody reads those codes again. ``affine = (a, b)`` (per output channel)
    gives ``a * conv + b`` instead (an inference BatchNorm folded in: ``a`` scales the weight scales, the bias
    becomes ``a * bias + b``). The int8 flow between modules (``quanta.nn.int8_flow``) uses the uint8 forms; the
    plain path the float one."""
    one_d = codes.dim() == 3
    if one_d:  # (n, c, l) -> (n, c, 1, l), as the weight was packed
        codes = codes.unsqueeze(2)
    packed, w_scale, w_zero, bias, geometry = _constants(module)
    if affine is not None:
        a, b = affine
        w_scale = w_scale * a
        bias = b if bias is None else torch.addcmul(b, bias, a)
    if accum is None:
        # Float: y = s_x * s_w[o] * acc + b straight to fp32, or rounded once to bf16. uint8: requantized once to
        # the output grid (output dtype None). Channels-last like the input.
        out = (1.0, 0, dtype) if out_scale is None else (out_scale, out_zero, None)
        y = torch.ops.onednn.qconv2d_pointwise(
            codes, x_scale, x_zero, packed, w_scale, w_zero, bias, *geometry, *out, "relu" if relu else "none", [], ""
        )
    elif out_scale is None:  # float output with the accumulator's float value summed in (and the ReLU)
        acc_codes, acc_scale, acc_zero = accum
        target = acc_codes.to(torch.float32, memory_format=torch.channels_last).sub_(acc_zero).mul_(acc_scale)
        y = torch.ops.onednn.qconv2d_pointwise.binary(
            codes, x_scale, x_zero, packed, w_scale, w_zero, target, bias, *geometry, 1.0, 0, torch.float32,
            1.0, 0, "sum", 1.0, "relu" if relu else None, [], None,
        ).to(dtype)  # fmt: skip
    else:
        acc_codes, acc_scale, acc_zero = accum
        # oneDNN's sum post-op writes into the accumulator: a copy unless nobody reads those codes again.
        layout = torch.channels_last
        owned = accum_owned and acc_codes.is_contiguous(memory_format=layout)
        target = acc_codes if owned else acc_codes.clone(memory_format=layout)
        y = torch.ops.onednn.qconv2d_pointwise.binary(
            codes, x_scale, x_zero, packed, w_scale, w_zero, target, bias, *geometry, out_scale, out_zero, None,
            acc_scale, acc_zero, "sum", 1.0, "relu" if relu else None, [], None,
        )  # fmt: skip
    return y.squeeze(2) if one_d else y


_CONSTANTS: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_GRIDS: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def input_grid_cached(module: Any) -> tuple[float, int]:
    """:func:`input_grid`, read from the tensors once per module and again when they change."""
    buffers = module._buffers  # the dict itself: nn.Module.__getattr__ costs a microsecond a name, per conv call
    scale, zero = buffers["act_scale"], buffers["act_zero"]
    cached = _GRIDS.get(module)
    if cached is not None and cached[0] is scale and cached[1] is zero and cached[2] == (scale._version, zero._version):
        return cached[3]
    grid = input_grid(module)
    _GRIDS[module] = (scale, zero, (scale._version, zero._version), grid)
    return grid


def _constants(module: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[Any, ...]]:
    """``(packed weight, weight scales, weight zero points, fp32 bias, geometry)`` of a conv, built once per
    module and rebuilt when its codes, scales or bias change (other objects, or written in place)."""
    buffers = module._buffers  # the dicts themselves: nn.Module.__getattr__ costs a microsecond a name
    held = module._held if module._held is not None else buffers["weight_codes"]
    scale, bias = buffers["weight_scale"], module.__dict__.get("bias", module._parameters.get("bias"))
    versions = (getattr(held, "_version", 0), scale._version, None if bias is None else bias._version)
    cached = _CONSTANTS.get(module)
    if cached is not None and cached[0] is held and cached[1] is scale and cached[2] is bias and cached[3] == versions:
        return cached[4]
    packed = held.packed if isinstance(held, PackedConvWeight) else _prepack(held, module.grouped_weight_shape)
    w_scale = scale.reshape(-1).float()  # (out,)
    stride, padding, dilation = list(module.stride), list(module.kernel_padding), list(module.dilation)
    if len(stride) == 1:  # conv1d runs as a conv2d of height 1
        stride, padding, dilation = [1, *stride], [0, *padding], [1, *dilation]
    geometry = (stride, padding, dilation, module.groups)
    constants = (
        packed,
        w_scale,
        torch.zeros(w_scale.numel(), dtype=torch.int64),
        None if bias is None else bias.float(),
        geometry,
    )
    if isinstance(held, PackedConvWeight):  # codes packed per call stay packed per call (memory budget)
        _CONSTANTS[module] = (held, scale, bias, versions, constants)
    return constants


def _run(x: torch.Tensor, module: Any) -> torch.Tensor:  # a QuantConv1d / QuantConv2d, raw fp32 or bf16 input
    scale, zero = input_grid_cached(module)
    y = conv_on_codes(module, quantize_input_codes(x, scale, zero), scale, zero, None, 0, None, False, x.dtype)
    # oneDNN writes channels-last; an NCHW input gets NCHW back, as torch's conv gives it (views stay valid).
    return y if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


def _kernel(op: str, applies: Any) -> Kernel:
    return Kernel(
        "int8_conv",
        op,
        applies,
        (torch.float32, torch.bfloat16),
        _run,
        activation=_activation,
        quantizes_input=True,
        to_layout=_to_layout,
        from_layout=_from_layout,
        layout_nbytes=_layout_nbytes,
        on_codes=conv_on_codes if op == "conv2d" else None,
        input_grid=input_grid_cached,
    )


INT8_CONV2D = register_kernel(_kernel("conv2d", _applies_conv2d))
INT8_CONV1D = register_kernel(_kernel("conv1d", _applies_conv1d))
