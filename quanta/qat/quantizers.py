"""The fake quantizers of quantization-aware training: what a weight or an input looks like after quantization,
with gradients for training.

Two kinds, chosen per rule by the recipe's method slot:

- **observed ranges** (the default): a weight's grid is refitted on every forward pass exactly as RTN fits it (the
  scheme's min/max per tensor, channel or group) and the gradient passes straight through where the weight was not
  clipped (:func:`quanta.codec.fake_quantize`); an input's range is an exponential moving average of the batches'
  min/max while training, frozen in eval mode;
- **LSQ** (``-lsq``; Esser et al. 2020, "Learned Step Size Quantization"): the step size is a parameter trained with
  the weights, ``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``, whose gradient with respect to ``s`` is
  scaled by ``1 / sqrt(n * qmax)`` (``n`` values per step). Steps start at ``2 mean|x| / sqrt(qmax)`` (the paper's
  initialisation, on the first batch for inputs). Zero points of asymmetric schemes are fitted by min/max at the
  start and then kept (LSQ+'s learned offset is not built yet).

Both compute the forward pass with the same float operations as the packed modules (``round(x * (1 / s)) + z``,
clamp, ``(q - z) * s``, with the step rounded to the scheme's scale dtype), so :func:`quanta.qat.convert` gives a
model whose outputs equal the fake-quantized model's in eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from quanta.codec import fake_quantize, quantize_tensor
from quanta.errors import UnsupportedError
from quanta.formats.base import SCALE_DTYPES, int_storage_dtype
from quanta.formats.integer import IntegerFormat
from quanta.primitives.affine import affine_qparams, int_range, symmetric_scale, symmetric_zero
from quanta.primitives.packing import pack
from quanta.primitives.ste import fake_quantize_affine, straight_through
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["FormatInputQuantizer", "InputQuantizer", "WeightQuantizer", "check_qat_scheme", "input_quantizer"]

EMA = 0.1  # weight of each new batch in the observed input range
MIN_STEP = 1e-8  # learned steps are kept above this (an optimizer step can push one through zero)


QAT_FORMATS = ("int", "uint", "binary", "ternary", "fixed")  # format families with a QAT form


def check_qat_scheme(scheme: QScheme, learned: bool) -> None:
    """Raise UnsupportedError for a scheme with no QAT form here."""
    family = scheme.format.rstrip("0123456789")
    if learned and not isinstance(scheme.fmt, IntegerFormat):
        raise UnsupportedError(f"{scheme}: LSQ learns integer grids' steps; drop '-lsq' for {scheme.format}.")
    if not isinstance(scheme.fmt, IntegerFormat) and family not in QAT_FORMATS and not scheme.format.startswith("q"):
        raise UnsupportedError(
            f"{scheme} has no QAT form yet: quantization-aware training takes integer, binary, ternary and "
            "fixed-point (Qm.n) schemes."
        )
    if scheme.rounding != "rne":
        raise UnsupportedError(f"{scheme}: QAT rounds to nearest; drop ':sr'.")
    if learned and scheme.mode == "fmin":
        raise UnsupportedError(f"{scheme}: LSQ learns steps of sym/asym grids; use ':sym' or ':asym'.")


def _scale_dtype(scheme: QScheme) -> torch.dtype:
    return SCALE_DTYPES[scheme.scale_dtype]


def _step(s: torch.Tensor, dtype: torch.dtype, factor: float) -> torch.Tensor:
    """The step ``s`` as the packed module will store it (rounded to ``dtype``), exactly, in the forward pass; in
    the backward pass its gradient is multiplied by ``factor`` (LSQ's step-size gradient scale). The value is built
    as ``stored + (t - t)``, which is exactly ``stored``: the usual ``s - s * f + s * f`` would round."""
    scaled = s * factor
    return s.detach().to(dtype).float() + (scaled - scaled.detach())


def _lsq(x: torch.Tensor, s: torch.Tensor, zero: torch.Tensor | int, qmin: int, qmax: int) -> torch.Tensor:
    inv = 1.0 / s
    v = x * inv
    q = v + (v.detach().round() - v.detach())  # round, gradient straight through
    if not (isinstance(zero, int) and zero == 0):
        q = q + zero
    q = q.clamp(qmin, qmax)  # gradient passes inside [qmin, qmax]
    if not (isinstance(zero, int) and zero == 0):
        q = q - zero
    return q * s


class WeightQuantizer(nn.Module):
    """Fake quantization of one weight with ``scheme`` (grouped along the input features of each output channel)."""

    step: nn.Parameter
    zero: torch.Tensor

    def __init__(self, weight: torch.Tensor, scheme: QScheme, learned: bool) -> None:
        super().__init__()
        check_qat_scheme(scheme, learned)
        self.scheme, self.learned = scheme, learned
        rows, cols = weight.shape[0], weight[0].numel()
        size = {"tensor": rows * cols, "channel": cols, "group": min(scheme.group_size or cols, cols)}[
            scheme.granularity
        ]
        if learned and scheme.granularity == "group" and cols % size:
            raise UnsupportedError(
                f"{scheme}: LSQ needs groups that divide the {cols} input features; choose another group size."
            )
        self.size = int(size)
        if learned:
            blocks = self._blocks(weight.detach().float())
            qmax = int_range(scheme.bits, scheme.fmt.signed_codes, scheme.narrow)[1]
            positive = qmax - self._zero_init(blocks)
            step = 2 * blocks.abs().mean(dim=-1) / math.sqrt(max(float(positive.float().mean()), 1.0))
            self.step = nn.Parameter(step.clamp(min=1e-8))  # (rows', groups)
            self.register_buffer("zero", self._zero_init(blocks).to(torch.int32))

    def _blocks(self, w: torch.Tensor) -> torch.Tensor:
        if self.scheme.granularity == "tensor":
            return w.reshape(1, 1, -1)
        return w.reshape(w.shape[0], -1, self.size)  # (rows, groups, size)

    def _zero_init(self, blocks: torch.Tensor) -> torch.Tensor:
        fmt, scheme = self.scheme.fmt, self.scheme
        qmin, qmax = int_range(scheme.bits, fmt.signed_codes, scheme.narrow)
        if scheme.mode == "asym":
            return affine_qparams(blocks.amin(-1), blocks.amax(-1), qmin, qmax)[1]
        return torch.full(blocks.shape[:-1], symmetric_zero(scheme.bits, fmt.signed_codes), dtype=torch.int32)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.learned:
            return fake_quantize(w, self.scheme)  # RTN's grid, refitted each pass; STE where not clipped
        qmin, qmax = int_range(self.scheme.bits, self.scheme.fmt.signed_codes, self.scheme.narrow)
        blocks = self._blocks(w.float())
        step = self.step.clamp(min=MIN_STEP)  # training may push a step through zero
        s = _step(step, _scale_dtype(self.scheme), 1.0 / math.sqrt(self.size * qmax)).unsqueeze(-1)
        return _lsq(blocks, s, self.zero.unsqueeze(-1), qmin, qmax).reshape(w.shape).to(w.dtype)

    def qtensor(self, w: torch.Tensor) -> QTensor:
        """The packed weight whose dequantized values are this quantizer's output for ``w``."""
        if not self.learned:
            return quantize_tensor(w.detach(), self.scheme)
        fmt, scheme = self.scheme.fmt, self.scheme
        params = {"scale": self.step.detach().clamp(min=MIN_STEP).to(_scale_dtype(scheme))}
        if scheme.mode == "asym":
            params["zero"] = self.zero.to(int_storage_dtype(scheme.bits, fmt.signed_codes))
        blocks = self._blocks(w.detach().float())
        codes = fmt.encode(blocks, params, scheme, None).reshape(w.shape[0], -1)
        packed = pack(codes, scheme.bits, fmt.signed_codes)
        return QTensor(codes=packed, params=params, scheme=scheme, shape=w.shape, dtype=w.dtype)


class InputQuantizer(nn.Module):
    """Static per-tensor fake quantization of a module's input with ``scheme`` (an integer scheme)."""

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor
    step: nn.Parameter
    zero: torch.Tensor

    def __init__(self, scheme: QScheme, learned: bool) -> None:
        super().__init__()
        check_qat_scheme(scheme, learned)
        if scheme.granularity != "tensor":
            raise UnsupportedError(f"{scheme}: QAT quantizes inputs per tensor; drop the granularity.")
        self.scheme, self.learned = scheme, learned
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        if learned:
            self.step = nn.Parameter(torch.ones(()))
            self.register_buffer("zero", torch.zeros((), dtype=torch.int32))

    def _qrange(self) -> tuple[int, int]:
        return int_range(self.scheme.bits, self.scheme.fmt.signed_codes, self.scheme.narrow)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` as the packed module stores them."""
        qmin, qmax = self._qrange()
        if self.learned:
            return self.step.detach().clamp(min=MIN_STEP).to(_scale_dtype(self.scheme)).float(), self.zero.clone()
        dtype = _scale_dtype(self.scheme)
        if self.scheme.mode == "asym":
            scale, zero = affine_qparams(self.lo, self.hi, qmin, qmax, dtype)
            return scale.float(), zero
        z0 = symmetric_zero(self.scheme.bits, self.scheme.fmt.signed_codes)
        scale = symmetric_scale(self.lo, self.hi, qmin - z0, qmax - z0, dtype)
        return scale.float(), torch.tensor(z0, dtype=torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self._qrange()
        values = x.float()
        if self.training or not bool(self.seen):
            with torch.no_grad():
                lo, hi = values.min(), values.max()
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    if self.learned:  # LSQ's initial step, and the zero point of the first batch's range
                        _, zero = affine_qparams(lo, hi, qmin, qmax) if self.scheme.mode == "asym" else (None, None)
                        z = (
                            int(zero)
                            if zero is not None
                            else symmetric_zero(self.scheme.bits, self.scheme.fmt.signed_codes)
                        )
                        self.zero.fill_(z)
                        self.step.fill_(float(2 * values.abs().mean() / math.sqrt(max(qmax - z, 1))))
                    self.seen.fill_(True)
                elif self.training:
                    self.lo.lerp_(lo, EMA)
                    self.hi.lerp_(hi, EMA)
        if self.learned:
            s = _step(self.step.clamp(min=MIN_STEP), _scale_dtype(self.scheme), 1.0 / math.sqrt(values.numel() * qmax))
            return _lsq(values, s, self.zero, qmin, qmax).to(x.dtype)
        scale, zero = self.qparams()
        return fake_quantize_affine(values, scale, zero, qmin, qmax).to(x.dtype)


class FormatInputQuantizer(nn.Module):
    """Static per-tensor fake quantization of an input with a non-integer format (binary, ternary, fixed point).

    The format's parameters (e.g. binary's scale ``mean|x|``) are fitted on each training batch and averaged
    (weight :data:`EMA` per batch after the first), frozen in eval mode; a fixed-point grid has none. The gradient
    passes straight through where the format does not clip the input (for binary, ``|x| <= scale``: the hardtanh
    estimator of binarized networks).
    """

    seen: torch.Tensor

    def __init__(self, scheme: QScheme) -> None:
        super().__init__()
        check_qat_scheme(scheme, learned=False)
        if scheme.granularity != "tensor":
            raise UnsupportedError(f"{scheme}: QAT quantizes inputs per tensor; drop the granularity.")
        self.scheme = scheme
        self.learned = False
        self.names = tuple(scheme.fmt.param_spec(scheme))
        for name, (trailing, dtype) in scheme.fmt.param_spec(scheme).items():
            self.register_buffer(f"param_{name}", torch.zeros((1, 1, *trailing), dtype=dtype))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def format_params(self) -> dict[str, torch.Tensor]:
        """The format's parameters as the packed module stores them (``act_<name>`` buffers)."""
        return {name: getattr(self, f"param_{name}").clone() for name in self.names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt, scheme = self.scheme.fmt, self.scheme
        blocks = x.float().reshape(1, 1, -1)
        if self.names and (self.training or not bool(self.seen)):
            with torch.no_grad():
                fitted = fmt.fit(blocks, scheme, None)
                for name in self.names:
                    buffer = getattr(self, f"param_{name}")
                    value = fitted[name].reshape(buffer.shape).to(buffer.dtype)
                    if bool(self.seen) and buffer.is_floating_point():
                        value = buffer.float().lerp(value.float(), EMA).to(buffer.dtype)
                    buffer.copy_(value)
                self.seen.fill_(True)
        params = self.format_params()
        with torch.no_grad():
            values = fmt.decode(fmt.encode(blocks, params, scheme, None), params, scheme).reshape(x.shape)
            inside = fmt.inside(blocks, params, scheme).reshape(x.shape)
        return straight_through(x, values.to(x.dtype), inside)


def input_quantizer(scheme: QScheme, learned: bool) -> InputQuantizer | FormatInputQuantizer:
    """The input quantizer for ``scheme``: integer grids get :class:`InputQuantizer`, other formats
    :class:`FormatInputQuantizer`."""
    if isinstance(scheme.fmt, IntegerFormat):
        return InputQuantizer(scheme, learned)
    check_qat_scheme(scheme, learned)
    return FormatInputQuantizer(scheme)
