"""The fake quantizers of quantization-aware training: what a weight or an input looks like after quantization,
with gradients for training.

The recipe's method slot chooses how ranges are found (one file each for the learned ones):

- **observed ranges** (``rtn``, the default): a weight's grid is refitted on every forward pass exactly as RTN fits
  it (the scheme's min/max per tensor, channel or group) and the gradient passes straight through where the weight
  was not clipped (:func:`quanta.codec.fake_quantize`); an input's range is an exponential moving average of the
  batches' min/max while training, frozen in eval mode or after :meth:`InputQuantizer.freeze`;
- **LSQ** (``-lsq``, :mod:`quanta.qat.lsq`): trained step sizes, zero points fixed at their initial min/max value;
- **LSQ+** (``-lsqplus``, :mod:`quanta.qat.lsq`): trained step sizes and zero points of asymmetric grids;
- **PACT** (``-pact``, :mod:`quanta.qat.pact`): a trained clipping level per input; weights as ``rtn``.

Inputs are initialised from the first training batch, or from calibration data passed to ``prepare_qat``. Every
forward computes ``round(x * (1 / s)) + z``, clamp, ``(q - z) * s`` with the packed modules' float operations
(the step rounded to the scheme's scale dtype), so :func:`quanta.qat.convert` gives a model whose outputs equal
the fake-quantized model's in eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from quanta.codec import fake_quantize, quantize_tensor
from quanta.errors import QuantaError, UnsupportedError
from quanta.formats.base import SCALE_DTYPES, int_storage_dtype
from quanta.formats.integer import IntegerFormat
from quanta.primitives.affine import affine_qparams, int_range, symmetric_scale, symmetric_zero
from quanta.primitives.packing import pack
from quanta.primitives.ste import fake_quantize_affine, straight_through
from quanta.qat.lsq import (
    lsq_fake_quantize,
    lsq_input_step,
    lsq_step,
    lsq_weight_step,
    lsq_zero,
    lsqplus_input_init,
    lsqplus_weight_step,
)
from quanta.qat.pact import pact_clip_level, pact_fake_quantize
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = [
    "QAT_METHODS",
    "FormatInputQuantizer",
    "InputQuantizer",
    "WeightQuantizer",
    "check_qat_scheme",
    "input_quantizer",
]

EMA = 0.1  # weight of each new batch in the observed input range
MIN_STEP = 1e-8  # learned steps are kept above this (an optimizer step can push one through zero)

QAT_METHODS = ("rtn", "lsq", "lsqplus", "pact")  # rtn: observed ranges with the straight-through estimator
LEARNED_STEPS = ("lsq", "lsqplus")
_NAMES = {"rtn": "RTN", "lsq": "LSQ", "lsqplus": "LSQ+", "pact": "PACT"}
QAT_FORMATS = ("int", "uint", "binary", "ternary", "fixed")  # format families with a QAT form


def check_qat_scheme(scheme: QScheme, method: str) -> None:
    """Raise UnsupportedError for a scheme with no QAT form under ``method`` here."""
    family = scheme.format.rstrip("0123456789")
    if method not in QAT_METHODS:
        raise UnsupportedError(f"{method!r} is not a QAT method; QAT takes {', '.join(QAT_METHODS)}.")
    if method != "rtn" and not isinstance(scheme.fmt, IntegerFormat):
        raise UnsupportedError(
            f"{scheme}: {_NAMES[method]} learns integer grids' steps; drop '-{method}' for {scheme.format}."
        )
    if not isinstance(scheme.fmt, IntegerFormat) and family not in QAT_FORMATS and not scheme.format.startswith("q"):
        raise UnsupportedError(
            f"{scheme} has no QAT form yet: quantization-aware training takes integer, binary, ternary and "
            "fixed-point (Qm.n) schemes."
        )
    if scheme.rounding != "rne":
        raise UnsupportedError(f"{scheme}: QAT rounds to nearest; drop ':sr'.")
    if method != "rtn" and scheme.mode == "fmin":
        raise UnsupportedError(f"{scheme}: {_NAMES[method]} learns steps of sym/asym grids; use ':sym' or ':asym'.")


def _scale_dtype(scheme: QScheme) -> torch.dtype:
    return SCALE_DTYPES[scheme.scale_dtype]


class WeightQuantizer(nn.Module):
    """Fake quantization of one weight with ``scheme`` (grouped along the input features of each output channel).

    ``method``: ``rtn`` (RTN's grid refitted each pass), ``lsq`` or ``lsqplus`` (learned steps; LSQ+ also learns
    the zero points of asymmetric schemes). PACT clips inputs only: its weights use ``rtn``.
    """

    step: nn.Parameter
    zero: torch.Tensor

    def __init__(self, weight: torch.Tensor, scheme: QScheme, method: str = "rtn") -> None:
        super().__init__()
        method = "rtn" if method == "pact" else method
        check_qat_scheme(scheme, method)
        self.scheme, self.method = scheme, method
        self.learned = method in LEARNED_STEPS
        rows, cols = weight.shape[0], weight[0].numel()
        size = {"tensor": rows * cols, "channel": cols, "group": min(scheme.group_size or cols, cols)}[
            scheme.granularity
        ]
        if self.learned and scheme.granularity == "group" and cols % size:
            raise UnsupportedError(
                f"{scheme}: {_NAMES[method]} needs groups that divide the {cols} input features; choose another "
                "group size."
            )
        self.size = int(size)
        if self.learned:
            self._init_learned(weight.detach().float())

    def _init_learned(self, w: torch.Tensor) -> None:
        scheme = self.scheme
        qmin, qmax = int_range(scheme.bits, scheme.fmt.signed_codes, scheme.narrow)
        blocks = self._blocks(w)
        zero = self._zero_init(blocks)
        if self.method == "lsq":
            self.step = nn.Parameter(lsq_weight_step(blocks, qmax - zero).clamp(min=MIN_STEP))  # (rows', groups)
            self.register_buffer("zero", zero.to(torch.int32))
            return
        step = lsqplus_weight_step(blocks, scheme.bits).clamp(min=MIN_STEP)
        self.step = nn.Parameter(step)
        if scheme.mode == "asym":  # the grid's centre on the block's mean, the offset then learned
            centre = (qmin + qmax) / 2 - blocks.mean(dim=-1) / step
            self.zero = nn.Parameter(centre.clamp(qmin, qmax))
        else:
            self.register_buffer("zero", zero.to(torch.int32))

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

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step and zero point of every block as the forward pass uses them (stored values, LSQ gradients)."""
        qmin, qmax = int_range(self.scheme.bits, self.scheme.fmt.signed_codes, self.scheme.narrow)
        factor = 1.0 / math.sqrt(self.size * qmax)
        step = lsq_step(self.step.clamp(min=MIN_STEP), _scale_dtype(self.scheme), factor)
        zero = self.zero
        if isinstance(zero, nn.Parameter):
            return step, lsq_zero(zero, qmin, qmax, factor)
        return step, zero

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.learned:
            return fake_quantize(w, self.scheme)  # RTN's grid, refitted each pass; STE where not clipped
        qmin, qmax = int_range(self.scheme.bits, self.scheme.fmt.signed_codes, self.scheme.narrow)
        step, zero = self._grid()
        out = lsq_fake_quantize(self._blocks(w.float()), step.unsqueeze(-1), zero.unsqueeze(-1), qmin, qmax)
        return out.reshape(w.shape).to(w.dtype)

    def qtensor(self, w: torch.Tensor) -> QTensor:
        """The packed weight whose dequantized values are this quantizer's output for ``w``."""
        if not self.learned:
            return quantize_tensor(w.detach(), self.scheme)
        fmt, scheme = self.scheme.fmt, self.scheme
        with torch.no_grad():
            step, zero = self._grid()
        params = {"scale": step.to(_scale_dtype(scheme))}
        if scheme.mode == "asym":
            params["zero"] = zero.to(int_storage_dtype(scheme.bits, fmt.signed_codes))
        blocks = self._blocks(w.detach().float())
        codes = fmt.encode(blocks, params, scheme, None).reshape(w.shape[0], -1)
        packed = pack(codes, scheme.bits, fmt.signed_codes)
        return QTensor(codes=packed, params=params, scheme=scheme, shape=w.shape, dtype=w.dtype)


class _Statistics:
    """What an input quantizer is initialised from: min, max, mean |x| and PACT's clip level, over batches."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.abs_sum, self.count, self.clip_sum, self.batches = 0.0, 0, 0.0, 0

    def add(self, values: torch.Tensor, pact: bool) -> None:
        if values.numel() == 0:
            return
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))
        self.abs_sum += float(values.abs().sum(dtype=torch.float64))
        self.count += values.numel()
        if pact:
            self.clip_sum += pact_clip_level(values)
        self.batches += 1


class InputQuantizer(nn.Module):
    """Static per-tensor fake quantization of a module's input with ``scheme`` (an integer scheme).

    ``method``: ``rtn`` (EMA of min/max), ``lsq`` / ``lsqplus`` (learned step, and zero point for LSQ+ on
    asymmetric schemes) or ``pact`` (learned clipping level).
    """

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor
    frozen: torch.Tensor
    step: nn.Parameter
    alpha: nn.Parameter
    zero: torch.Tensor

    def __init__(self, scheme: QScheme, method: str = "rtn") -> None:
        super().__init__()
        check_qat_scheme(scheme, method)
        if scheme.granularity != "tensor":
            raise UnsupportedError(f"{scheme}: QAT quantizes inputs per tensor; drop the granularity.")
        self.scheme, self.method = scheme, method
        self.learned = method != "rtn"
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        if method in LEARNED_STEPS:
            self.step = nn.Parameter(torch.ones(()))
            if method == "lsqplus" and scheme.mode == "asym":
                self.zero = nn.Parameter(torch.zeros(()))
            else:
                self.register_buffer("zero", torch.zeros((), dtype=torch.int32))
        elif method == "pact":
            self.alpha = nn.Parameter(torch.ones(()))
        self.statistics: _Statistics | None = None  # set while prepare_qat calibrates

    def _qrange(self) -> tuple[int, int]:
        return int_range(self.scheme.bits, self.scheme.fmt.signed_codes, self.scheme.narrow)

    def _range_qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = self._qrange()
        dtype = _scale_dtype(self.scheme)
        if self.scheme.mode == "asym":
            scale, zero = affine_qparams(lo, hi, qmin, qmax, dtype)
            return scale.float(), zero
        z0 = symmetric_zero(self.scheme.bits, self.scheme.fmt.signed_codes)
        scale = symmetric_scale(lo, hi, qmin - z0, qmax - z0, dtype)
        return scale.float(), torch.tensor(z0, dtype=torch.int32)

    def _pact_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alpha.clamp(min=MIN_STEP)
        return (-alpha if self.scheme.mode == "sym" else self.lo), alpha

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` as the packed module stores them."""
        qmin, qmax = self._qrange()
        with torch.no_grad():
            if self.method in LEARNED_STEPS:
                step = self.step.clamp(min=MIN_STEP).to(_scale_dtype(self.scheme)).float()
                zero = self.zero
                if isinstance(zero, nn.Parameter):
                    zero = zero.round().clamp(qmin, qmax)
                return step, zero.to(torch.int32)
            if self.method == "pact":
                return self._range_qparams(*self._pact_range())
            return self._range_qparams(self.lo, self.hi)

    def freeze(self) -> None:
        """Stop updating the observed range (``rtn``); learned ranges keep training."""
        self.frozen.fill_(True)

    def _initialise(self, stats: _Statistics) -> None:
        """Set the range (and the learned parameters' starting values) from ``stats``."""
        if stats.count == 0:
            raise QuantaError("an input quantizer saw no values: calibration batches must reach every quantized layer.")
        qmin, qmax = self._qrange()
        asym = self.scheme.mode == "asym"
        self.lo.fill_(stats.lo)
        self.hi.fill_(stats.hi)
        mean_abs = stats.abs_sum / stats.count
        if self.method == "lsq":
            if asym:
                zero = int(affine_qparams(self.lo, self.hi, qmin, qmax)[1])
            else:
                zero = symmetric_zero(self.scheme.bits, self.scheme.fmt.signed_codes)
            self.zero.fill_(zero)
            self.step.fill_(lsq_input_step(mean_abs, qmax - zero))
        elif self.method == "lsqplus":
            step, zero_float = lsqplus_input_init(min(stats.lo, 0.0), max(stats.hi, 0.0), qmin, qmax, asym)
            self.step.fill_(step)
            if isinstance(self.zero, nn.Parameter):
                self.zero.fill_(zero_float)
            else:
                self.zero.fill_(symmetric_zero(self.scheme.bits, self.scheme.fmt.signed_codes))
        elif self.method == "pact":
            self.alpha.fill_(max(stats.clip_sum / stats.batches, max(stats.hi, 0.0) * 1e-3, MIN_STEP))
            self.lo.fill_(min(stats.lo, 0.0))  # 0 for non-negative inputs (PACT's case), else the smallest seen
        self.seen.fill_(True)

    def begin_calibration(self) -> None:
        self.statistics = _Statistics()

    def abort_calibration(self) -> None:
        self.statistics = None

    def end_calibration(self) -> None:
        stats, self.statistics = self.statistics, None
        assert stats is not None
        with torch.no_grad():
            self._initialise(stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self._qrange()
        values = x.float()
        if self.statistics is not None:  # calibrating: observe the float input, pass it on unchanged
            with torch.no_grad():
                self.statistics.add(values, self.method == "pact")
            return x
        if not bool(self.seen):
            with torch.no_grad():
                first = _Statistics()
                first.add(values, self.method == "pact")
                self._initialise(first)
        elif self.training and self.method == "rtn" and not bool(self.frozen):
            with torch.no_grad():
                self.lo.lerp_(values.min(), EMA)
                self.hi.lerp_(values.max(), EMA)
        if self.method in LEARNED_STEPS:
            factor = 1.0 / math.sqrt(values.numel() * qmax)
            step = lsq_step(self.step.clamp(min=MIN_STEP), _scale_dtype(self.scheme), factor)
            zero = self.zero
            if isinstance(zero, nn.Parameter):
                zero = lsq_zero(zero, qmin, qmax, factor)
            return lsq_fake_quantize(values, step, zero, qmin, qmax).to(x.dtype)
        scale, zero = self.qparams()
        if self.method == "pact":
            lo, alpha = self._pact_range()
            return pact_fake_quantize(values, lo, alpha, scale, zero, qmin, qmax).to(x.dtype)
        return fake_quantize_affine(values, scale, zero, qmin, qmax).to(x.dtype)


class FormatInputQuantizer(nn.Module):
    """Static per-tensor fake quantization of an input with a non-integer format (binary, ternary, fixed point).

    The format's parameters (e.g. binary's scale ``mean|x|``) are fitted on each training batch and averaged
    (weight :data:`EMA` per batch after the first), frozen in eval mode; a fixed-point grid has none. The gradient
    passes straight through where the format does not clip the input (for binary, ``|x| <= scale``: the hardtanh
    estimator of binarized networks).
    """

    seen: torch.Tensor
    frozen: torch.Tensor

    def __init__(self, scheme: QScheme) -> None:
        super().__init__()
        check_qat_scheme(scheme, "rtn")
        if scheme.granularity != "tensor":
            raise UnsupportedError(f"{scheme}: QAT quantizes inputs per tensor; drop the granularity.")
        self.scheme = scheme
        self.learned = False
        self.names = tuple(scheme.fmt.param_spec(scheme))
        for name, (trailing, dtype) in scheme.fmt.param_spec(scheme).items():
            self.register_buffer(f"param_{name}", torch.zeros((1, 1, *trailing), dtype=dtype))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.calibrating = False  # set while prepare_qat calibrates

    def freeze(self) -> None:
        """Stop updating the averaged parameters."""
        self.frozen.fill_(True)

    def begin_calibration(self) -> None:
        self.calibrating = True

    def abort_calibration(self) -> None:
        self.calibrating = False

    def end_calibration(self) -> None:
        self.calibrating = False
        if self.names and not bool(self.seen):
            raise QuantaError("an input quantizer saw no values: calibration batches must reach every quantized layer.")

    def format_params(self) -> dict[str, torch.Tensor]:
        """The format's parameters as the packed module stores them (``act_<name>`` buffers)."""
        return {name: getattr(self, f"param_{name}").clone() for name in self.names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt, scheme = self.scheme.fmt, self.scheme
        blocks = x.float().reshape(1, 1, -1)
        fitting = (self.training or self.calibrating) and not bool(self.frozen)
        if self.names and (fitting or not bool(self.seen)):
            with torch.no_grad():
                fitted = fmt.fit(blocks, scheme, None)
                for name in self.names:
                    buffer = getattr(self, f"param_{name}")
                    value = fitted[name].reshape(buffer.shape).to(buffer.dtype)
                    if bool(self.seen) and buffer.is_floating_point():
                        value = buffer.float().lerp(value.float(), EMA).to(buffer.dtype)
                    buffer.copy_(value)
                self.seen.fill_(True)
        if self.calibrating:
            return x
        params = self.format_params()
        with torch.no_grad():
            values = fmt.decode(fmt.encode(blocks, params, scheme, None), params, scheme).reshape(x.shape)
            inside = fmt.inside(blocks, params, scheme).reshape(x.shape)
        return straight_through(x, values.to(x.dtype), inside)


def input_quantizer(scheme: QScheme, method: str) -> InputQuantizer | FormatInputQuantizer:
    """The input quantizer for ``scheme``: integer grids get :class:`InputQuantizer`, other formats
    :class:`FormatInputQuantizer` (observed parameters)."""
    if isinstance(scheme.fmt, IntegerFormat):
        return InputQuantizer(scheme, method)
    check_qat_scheme(scheme, "rtn")
    return FormatInputQuantizer(scheme)
