"""int8 activations flowing between quantized convolutions, without tracing the model.

A W8A8 CNN spends as long between its int8 convolutions as in them when every conv returns float: the model's own
ReLUs, residual adds and the next conv's input quantization each read and write the activation in fp32. Graph
rewriting tools (torch's FX, onnxruntime) fuse those ops into the convolutions. quanta sees no graph, so it defers
instead: inside a call of a quantized model, a conv on the ``int8_conv`` kernel returns an :class:`Int8Activation`,
a tensor that records the convolution without running it. What the model then does with it is folded in:

- ``F.relu`` / ``relu_`` / ``nn.ReLU(inplace=True)``: becomes oneDNN's fused ReLU post-op;
- ``out + shortcut`` / ``out += shortcut`` with an int8 ``shortcut``: becomes oneDNN's fused sum post-op;
- slicing and zero padding (ResNet's option-A shortcut) of a computed activation: done on its uint8 codes;
- an inference ``BatchNorm`` (``F.batch_norm`` with running statistics, not training): folded into the conv's
  per-channel weight scales and bias (``a * conv + b``), so models need not fold BatchNorm first.

The convolution runs when its result is first read. Read by another int8 conv, it is written as uint8 at that
conv's calibrated input scale (the rounding the conv would apply to a float input; oneDNN requantizes the int32
sums), and that conv takes the bytes as they are, so the activation crosses no float step between the two.
Read by anything else first (pooling, a float layer, a user's op), it is computed in float: the convolution, the
sum and the ReLU as the plain kernel path computes them. A value is computed once: later readers get the form it
was first computed in (uint8 codes dequantize exactly; a float value stays exact for every reader but int8 convs).

So the numerical change from the plain kernel path is one rounding, where a tensor an int8 conv has read as codes
is read again elsewhere: by the residual add (the shortcut is summed on the conv's 8-bit grid, as FX's int8 graphs
hold it), by a float op, or as a returned output. Those readers see the codes: within half a step of the value
inside the conv's calibrated range, clipped to it outside (as the conv itself saw the value).

Only calls of the quantized model itself (the root module :func:`enable` registers hooks on) produce these
tensors, and every one left in the model's outputs (in tuples, lists, dicts and other pytree containers) is
turned into a plain tensor before the call returns; forward hooks on submodules do see them (they read as float
tensors: ``.numpy()``, ``.tolist()``, any op). Calling a submodule directly, inputs that need gradients,
BatchNorms whose parameters need gradients, a ``torch.compile`` trace and ``QUANTA_KERNEL=reference`` take the
plain path. An accumulator is snapshotted when the sum is folded, so later in-place ops on the shortcut do not
reach the pending sum. In-place ops other than ReLU and the shortcut add turn the activation into an ordinary float
value first; in-place ops on a *slice* of an activation (or on one that has slices) raise a QuantaError, since
int8 codes share no float storage with their views (turn the flow off for such a model).
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from quanta.errors import QuantaError
from quanta.kernels.int8_conv import quantize_input_codes

__all__ = ["Int8Activation", "active", "can_flow", "enable", "is_enabled", "plain"]

aten = torch.ops.aten
CHANNELS_LAST = torch.channels_last
ATTRIBUTE = "quanta_int8_flow"  # on the root model: whether its calls let int8 activations flow (quanta.json too)


class _State(threading.local):
    depth = 0  # how many flow-enabled model calls are running on this thread


_STATE = _State()


def active() -> bool:
    """True inside a call of a flow-enabled quantized model (and not while torch.compile traces it)."""
    return _STATE.depth > 0 and not torch.compiler.is_compiling()


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


# -- the deferred tensor ------------------------------------------------------------------------------------------

# (conv module, input codes, input scale, input zero point, output scale or None for float, output zero point,
#  (accumulator codes, scale, zero point) or None, fused relu, float dtype[, accumulator owned]) -> output
ConvRunner = Callable[..., torch.Tensor]


class Int8Activation(torch.Tensor):
    """A float tensor held as a pending int8 convolution (with ReLU / sum folded in) or as computed uint8 codes.

    It has the float tensor's shape and dtype; any op quanta does not fold computes it (:meth:`dequantize`) and
    runs on the float value. Built by quantized convolutions only, never by users.
    """

    # Set by exactly one state: ``codes`` (computed, uint8, channels-last) or ``value`` (computed, float) or
    # ``conv`` (pending: ``conv(x)``, plus ``accum`` and ``relu``).
    codes: torch.Tensor | None
    scale: float
    zero: int
    value: torch.Tensor | None
    conv: nn.Module | None
    runner: ConvRunner | None
    x: tuple[torch.Tensor, float, int] | None  # the pending conv's input: codes, scale, zero point
    accum: tuple[torch.Tensor, float, int] | None  # codes, scale, zero point added to the conv's output (fused sum)
    affine: tuple[torch.Tensor, torch.Tensor] | None  # (a, b) per channel: a * conv + b (a folded BatchNorm)
    pool: tuple[Any, ...] | None  # max pooling after the conv, sum and ReLU: F.max_pool2d's arguments
    fused_relu: bool
    nonnegative: bool  # a ReLU already applied: another one changes nothing
    viewed: bool  # its codes are a view, or have views (slices): never handed to oneDNN to overwrite
    float_first: bool  # computed in float first: the float value is the exact one, codes a rounding of it

    @staticmethod
    def __new__(cls, shape: torch.Size, dtype: torch.dtype) -> Int8Activation:
        # The strides of what it holds (channels-last codes and values for 4-D), so that reshapes and views of it
        # behave as they would on its float value.
        strides = _channels_last_strides(shape) if len(shape) == 4 else None
        return torch.Tensor._make_wrapper_subclass(cls, shape, strides=strides, dtype=dtype, device=torch.device("cpu"))

    def __init__(self, shape: torch.Size, dtype: torch.dtype) -> None:
        # Plain attributes: reading .shape / .dtype of a tensor subclass goes through __torch_function__.
        self.size_, self.dtype_ = shape, dtype
        self.codes = self.value = self.conv = self.runner = self.x = self.accum = self.affine = self.pool = None
        self.scale, self.zero, self.fused_relu, self.nonnegative, self.viewed = 1.0, 0, False, False, False
        self.float_first = False

    @classmethod
    def pending(
        cls,
        shape: torch.Size,
        dtype: torch.dtype,
        conv: nn.Module,
        runner: ConvRunner,
        x: tuple[torch.Tensor, float, int],
    ) -> Int8Activation:
        """The result of ``conv`` on the uint8 input ``x``, computed by ``runner`` when first read."""
        out = cls(shape, dtype)
        out.conv, out.runner, out.x = conv, runner, x
        return out

    @classmethod
    def of_codes(
        cls, codes: torch.Tensor, scale: float, zero: int, dtype: torch.dtype, nonnegative: bool = False
    ) -> Int8Activation:
        out = cls(codes.shape, dtype)
        out.codes, out.scale, out.zero, out.nonnegative = codes, scale, zero, nonnegative
        return out

    def _with(
        self,
        accum: tuple[torch.Tensor, float, int] | None,
        relu: bool,
        affine: tuple[torch.Tensor, torch.Tensor] | None = None,
        pool: tuple[tuple[Any, ...], torch.Size] | None = None,
    ) -> Int8Activation:
        """A copy of this pending conv with another sum / ReLU, a BatchNorm or a max pooling (its arguments and
        the pooled shape) folded in."""
        assert self.conv is not None and self.runner is not None and self.x is not None
        size = self.size_ if pool is None else pool[1]
        out = Int8Activation.pending(size, self.dtype_, self.conv, self.runner, self.x)
        out.accum, out.fused_relu, out.nonnegative = accum, relu, relu
        out.affine = self.affine if affine is None else affine
        out.pool = self.pool if pool is None else pool[0]
        return out

    @property
    def is_pending(self) -> bool:
        return self.conv is not None

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        return self.dequantize().numpy(*args, **kwargs)

    def tolist(self) -> Any:
        return self.dequantize().tolist()

    def __repr__(self) -> str:  # type: ignore[override]
        state = "pending conv" if self.is_pending else ("uint8" if self.codes is not None else "float")
        return f"Int8Activation(shape={tuple(self.size_)}, {state})"

    # -- computing ----------------------------------------------------------------------------------------------

    def _drop_pending(self) -> None:
        self.conv = self.runner = self.x = self.accum = self.affine = self.pool = None

    def as_codes(self, scale: float, zero: int) -> tuple[torch.Tensor, float, int]:
        """``(codes, scale, zero point)``: computed as uint8 at this grid unless already computed (then as held)."""
        if self.codes is None:
            if self.value is not None:
                self.codes, self.float_first = quantize_input_codes(self.value, scale, zero), True
            else:
                assert self.runner is not None and self.x is not None
                acc, owned = self.accum, False
                if acc is not None:
                    self.accum = None
                    owned = _only_reference(acc[0])
                codes = self.runner(
                    self.conv, *self.x, scale, zero, acc, self.fused_relu, self.dtype_, owned, self.affine
                )
                # Max pooling commutes with the (monotone) rounding to codes: pooling the codes is exact.
                self.codes = codes if self.pool is None else _max_pool_codes(codes, self.pool)
                self._drop_pending()
            self.scale, self.zero = scale, zero
        return self.codes, self.scale, self.zero

    def held_codes(self) -> tuple[torch.Tensor, float, int]:
        """The computed codes with their grid."""
        assert self.codes is not None
        return self.codes, self.scale, self.zero

    def dequantize(self) -> torch.Tensor:
        """The float value (computed once; uint8 codes are dequantized exactly)."""
        if self.value is None:
            if self.codes is not None:
                self.value = self.codes.to(torch.float32).sub_(self.zero).mul_(self.scale).to(self.dtype_)
            else:  # the conv in float, with the sum and the ReLU fused (the accumulator's exact float value)
                assert self.runner is not None and self.x is not None
                acc = self.accum
                value = self.runner(self.conv, *self.x, None, 0, acc, self.fused_relu, self.dtype_, False, self.affine)
                self.value = value if self.pool is None else torch.nn.functional.max_pool2d(value, *self.pool)
                self._drop_pending()
        return self.value

    def _become_float(self) -> torch.Tensor:
        """Hold the float value only (before an in-place op quanta does not fold)."""
        value = self.dequantize()
        self.codes = None
        return value

    # -- ops ----------------------------------------------------------------------------------------------------

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # The ops a CNN's forward calls between its convolutions are folded here, before torch's dispatcher (tens
        # of microseconds a call cheaper than __torch_dispatch__); everything else goes down to the dispatcher as
        # for a plain tensor (attribute reads stay native) and reaches __torch_dispatch__'s fallback.
        fold = _PYTHON_FOLDS.get(func)
        if fold is not None:
            out = fold(*args, **(kwargs or {}))
            if out is not NotImplemented:
                return out
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        folded = _fold(func, args, kwargs)
        if folded is not NotImplemented:
            return folded
        mutated = _mutated_args(func, args)
        if any(isinstance(a, cls) and id(a) in mutated and a.viewed for a in args):
            raise QuantaError(
                f"{func} writes in place into a slice of an int8 activation (or an activation that has slices); "
                "int8 activations hold no shared float storage for that. Turn the int8 flow off for this model: "
                "quanta.nn.int8_flow.enable(model, False)."
            )
        unwrapped_args, unwrapped_kwargs = tree_map(
            lambda t: t._become_float() if id(t) in mutated else (t.dequantize() if isinstance(t, cls) else t),
            (args, kwargs),
        )
        out = func(*unwrapped_args, **unwrapped_kwargs)
        if mutated and isinstance(args[0], cls) and id(args[0]) in mutated:
            return args[0]  # an in-place op returns its own (now float-held) tensor
        return out


def _only_reference(codes: torch.Tensor) -> bool:
    """Whether the accumulator ``codes`` (held by the caller's tuple only) is the last reference to its storage,
    so that oneDNN's sum post-op may write the conv's output over it instead of over a copy.

    Python's reference count of the tensor (the caller's tuple, this argument, getrefcount's own: 3) and
    the storage's use count (one tensor, plus the temporary storage object asked for here) are exact: a caller's
    variable, another pending conv or any view of the bytes (a slice, a pooled view) makes one of them higher, and
    the codes are copied. Where torch lacks the use count, they are always copied."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or sys.getrefcount(codes) > 3:
        return False
    return bool(use_count(codes.untyped_storage()._cdata) == 2)


def _mutated_args(func: Any, args: tuple[Any, ...]) -> set[int]:
    """ids of the Int8Activation arguments ``func`` writes to (in-place ops, ``out=``)."""
    schema = func._schema
    ids = set()
    for arg, value in zip(schema.arguments, args, strict=False):
        if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, Int8Activation):
            ids.add(id(value))
    return ids


def _has_codes(t: Any) -> bool:
    """Whether ``t`` is an Int8Activation computed as uint8 codes first (by the int8 conv that read it); one
    computed in float first keeps its exact float value for every op but the int8 convs."""
    return isinstance(t, Int8Activation) and t.codes is not None and not t.float_first


def _fold(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ops quanta folds into the pending conv or runs on the uint8 codes; NotImplemented for the rest."""
    if func is aten.detach.default or func is aten.alias.default:
        return args[0]  # never requires grad: detaching changes nothing
    if func in (aten.relu.default, aten.relu_.default):
        x = args[0]
        if x.nonnegative:
            return x
        in_place = func is aten.relu_.default
        if x.is_pending:
            if not in_place:
                return x._with(x.accum, relu=True)
            x.fused_relu = x.nonnegative = True
            return x
        if _has_codes(x):
            assert x.codes is not None
            if in_place and x.viewed:
                raise QuantaError(
                    "relu_ in place on a slice of an int8 activation (or one that has slices) cannot reach the "
                    "other views; turn the int8 flow off for this model: quanta.nn.int8_flow.enable(model, False)."
                )
            if in_place:  # new codes: pending convs that read the old ones keep them (they read before the ReLU)
                x.codes, x.value, x.nonnegative = x.codes.clamp_min(x.zero), None, True
                return x
            return Int8Activation.of_codes(x.codes.clamp_min(x.zero), x.scale, x.zero, x.dtype_, True)
        return NotImplemented
    if func in (aten.add.Tensor, aten.add_.Tensor) and len(args) == 2 and not kwargs:
        a, b = args
        if not (isinstance(a, Int8Activation) and isinstance(b, Int8Activation)) or a.size_ != b.size_:
            return NotImplemented
        if a.dtype_ != b.dtype_ or a is b:
            return NotImplemented
        in_place = func is aten.add_.Tensor
        pairs = ((a, b),) if in_place else ((a, b), (b, a))
        for conv_out, shortcut in pairs:
            if (
                conv_out.is_pending
                and conv_out.accum is None
                and not conv_out.fused_relu
                and conv_out.pool is None
                and _has_codes(shortcut)
            ):
                snapshot = shortcut.held_codes()  # the bytes now: later in-place ops on the shortcut rebind its codes
                if not in_place:
                    return conv_out._with(snapshot, relu=False)
                conv_out.accum = snapshot
                return conv_out
        return NotImplemented
    if func is aten.slice.Tensor and _has_codes(args[0]):
        x = args[0]
        assert x.codes is not None
        view = Int8Activation.of_codes(func(x.codes, *args[1:], **kwargs), x.scale, x.zero, x.dtype_, x.nonnegative)
        x.viewed = view.viewed = True
        return view
    if func is aten.constant_pad_nd.default and _has_codes(args[0]):
        x, pad = args[0], list(args[1])
        value = args[2] if len(args) > 2 else kwargs.get("value", 0)
        if value != 0 or any(p < 0 for p in pad) or len(pad) % 2:
            return NotImplemented
        assert x.codes is not None
        return Int8Activation.of_codes(_pad_codes(x.codes, pad, x.zero), x.scale, x.zero, x.dtype_, x.nonnegative)
    return NotImplemented


def _relu_fold(*args: Any, **kwargs: Any) -> Any:
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if not isinstance(x, Int8Activation) or set(kwargs) - {"input", "self", "inplace"}:
        return NotImplemented
    inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
    return _fold(aten.relu_.default if inplace else aten.relu.default, (x,), {})


def _relu_inplace_fold(*args: Any, **kwargs: Any) -> Any:
    return _relu_fold(*args, **{**kwargs, "inplace": True})


def _add_fold(*args: Any, inplace: bool = False, **kwargs: Any) -> Any:
    """``a + b`` / ``torch.add(a, b)`` / ``a.add(other=b)``: alpha 1 and no ``out=`` only."""
    if set(kwargs) - {"input", "self", "other", "alpha"} or kwargs.get("alpha", 1) != 1:
        return NotImplemented
    a = args[0] if args else kwargs.get("input", kwargs.get("self"))
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if len(args) > 2 and args[2] != 1:  # torch.add(a, b, alpha) positionally
        return NotImplemented
    return _fold(aten.add_.Tensor if inplace else aten.add.Tensor, (a, b), {})


def _iadd_fold(*args: Any, **kwargs: Any) -> Any:
    return _add_fold(*args, inplace=True, **kwargs)


def _getitem_fold(x: Any, index: Any) -> Any:
    """Basic slicing (slices and ``...``) of computed codes: a view of them."""
    if not _has_codes(x):
        return NotImplemented
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) or i is Ellipsis for i in items):
        return NotImplemented
    if any(isinstance(i, slice) and any(isinstance(v, torch.Tensor) for v in (i.start, i.stop, i.step)) for i in items):
        return NotImplemented
    assert x.codes is not None
    with torch._C.DisableTorchFunctionSubclass():
        view = Int8Activation.of_codes(x.codes[index], x.scale, x.zero, x.dtype_, x.nonnegative)
    x.viewed = view.viewed = True
    return view


def _pad_fold(x: Any, pad: Any, mode: str = "constant", value: float | None = None) -> Any:
    if mode != "constant" or not _has_codes(x):
        return NotImplemented
    return _fold(aten.constant_pad_nd.default, (x, list(pad), 0 if value is None else value), {})


# id(running_var) -> (weak reference to it, (mean, weight, bias), (versions, eps), (a, b)); an entry goes when its
# running_var does (tensors compare elementwise, so they cannot be dict keys themselves).
_AFFINES: dict[int, tuple[Any, ...]] = {}


def _batch_norm_affine(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of an inference BatchNorm, ``a * x + b``, kept per BatchNorm until one of its tensors changes."""
    tensors = (mean, weight, bias)
    versions = tuple(None if t is None else t._version for t in (mean, var, weight, bias))
    cached = _AFFINES.get(id(var))
    if (
        cached is not None
        and cached[0]() is var
        and all(c is t for c, t in zip(cached[1], tensors, strict=True))
        and cached[2] == (versions, eps)
    ):
        return cached[3]
    a = torch.rsqrt(var.float() + eps)
    if weight is not None:
        a = a * weight.float()
    b = -a * mean.float()
    if bias is not None:
        b = b + bias.float()
    key = id(var)
    _AFFINES[key] = (weakref.ref(var, lambda _ref: _AFFINES.pop(key, None)), tensors, (versions, eps), (a, b))
    return a, b


def _batch_norm_fold(
    x: Any,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Any:
    """An inference BatchNorm right after a pending conv: folded into it, ``a * conv + b`` per channel with
    ``a = weight / sqrt(var + eps)`` and ``b = bias - a * mean`` (the conv's weight scales and bias absorb them)."""
    if not isinstance(x, Int8Activation) or not x.is_pending or x.accum is not None or x.fused_relu or x.pool:
        return NotImplemented
    if training or running_mean is None or running_var is None or running_mean.numel() != x.size_[1]:
        return NotImplemented
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (weight, bias)):
        return NotImplemented  # the float BatchNorm carries the gradient to its parameters
    a, b = _batch_norm_affine(running_mean, running_var, weight, bias, eps)
    if x.affine is not None:  # two in a row: a2 * (a1 * conv + b1) + b2
        a, b = x.affine[0] * a, torch.addcmul(b, x.affine[1], a)
    return x._with(None, relu=False, affine=(a, b))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _max_pool_codes(codes: torch.Tensor, pool: tuple[Any, ...]) -> torch.Tensor:
    """``F.max_pool2d`` of uint8 channels-last codes. Non-overlapping windows (kernel = stride, no padding or
    dilation; LeNet's and most CNNs' 2x2 pools) take the elementwise maximum of the k*k strided views, 4x faster
    here than torch's quantized pooling and 8x faster than its uint8 pooling (which also wants NCHW)."""
    (kh, kw), (sh, sw) = _pair(pool[0]), _pair(pool[1])
    if (kh, kw) == (sh, sw) and _pair(pool[2]) == (0, 0) and _pair(pool[3]) == (1, 1) and not pool[4]:
        oh, ow = codes.shape[2] // kh, codes.shape[3] // kw
        out: torch.Tensor | None = None
        for i in range(kh):
            for j in range(kw):
                view = codes[:, :, i : i + kh * oh : kh, j : j + kw * ow : kw]
                out = view.contiguous(memory_format=CHANNELS_LAST) if out is None else torch.maximum(out, view)
        assert out is not None
        return out
    with warnings.catch_warnings():  # torch 2.13 flags quint8 tensors as deprecated; this one lives for one call
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_tensor_quantized_tensor(codes, 1.0, 0)  # the grid does not matter to a maximum
        pooled = torch.nn.functional.max_pool2d(q, *pool)
    return pooled.int_repr().contiguous(memory_format=CHANNELS_LAST)


def _max_pool2d_fold(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """2-D max pooling of a pending conv (after its sum and ReLU) or of computed codes: on the uint8 codes."""
    if not isinstance(x, Int8Activation) or return_indices or len(x.size_) != 4:
        return NotImplemented
    pool = (kernel_size, stride if stride else kernel_size, padding, dilation, ceil_mode)
    if _has_codes(x):
        assert x.codes is not None
        return Int8Activation.of_codes(_max_pool_codes(x.codes, pool), x.scale, x.zero, x.dtype_, x.nonnegative)
    if not x.is_pending or x.pool is not None:
        return NotImplemented
    shape = torch.nn.functional.max_pool2d(torch.empty(x.size_, device="meta"), *pool).shape
    return x._with(x.accum, x.fused_relu, pool=(pool, shape))


_PYTHON_FOLDS: dict[Any, Callable[..., Any]] = {
    torch.nn.functional.max_pool2d: _max_pool2d_fold,
    getattr(torch.nn.functional, "_max_pool2d", _max_pool2d_fold): _max_pool2d_fold,  # boolean_dispatch's target
    torch.nn.functional.batch_norm: _batch_norm_fold,
    torch.relu: _relu_fold,
    torch.Tensor.relu: _relu_fold,
    torch.nn.functional.relu: _relu_fold,
    torch.relu_: _relu_inplace_fold,
    torch.Tensor.relu_: _relu_inplace_fold,
    torch.nn.functional.relu_: _relu_inplace_fold,
    torch.Tensor.__add__: _add_fold,
    torch.Tensor.__radd__: _add_fold,
    torch.add: _add_fold,
    torch.Tensor.add: _add_fold,
    torch.Tensor.__iadd__: _iadd_fold,
    torch.Tensor.add_: _iadd_fold,
    torch.Tensor.__getitem__: _getitem_fold,
    torch.nn.functional.pad: _pad_fold,
    torch._C._nn.pad: _pad_fold,
}


def _pad_codes(codes: torch.Tensor, pad: list[int], zero: int) -> torch.Tensor:
    """``F.pad(codes, pad, value=zero)`` for non-negative pads, written once into a channels-last buffer (4-D)."""
    shape = list(codes.shape)
    index: list[slice] = [slice(None)] * len(shape)
    for i in range(len(pad) // 2):  # pad pairs run from the last dim backwards
        dim = len(shape) - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        index[dim] = slice(lo, lo + shape[dim])
        shape[dim] += lo + hi
    layout = torch.channels_last if codes.dim() == 4 else torch.contiguous_format
    out = torch.empty(shape, dtype=torch.uint8, memory_format=layout).fill_(zero)
    out[tuple(index)] = codes
    return out


def plain(output: Any) -> Any:
    """``output`` with every Int8Activation in it (nested in tuples, lists, dicts) turned into a float tensor."""
    return tree_map(lambda t: t.dequantize() if isinstance(t, Int8Activation) else t, output)


# -- the root model's hooks ---------------------------------------------------------------------------------------


_ENTERED = "_quanta_flow_calls"  # running flow-enabled calls of this module (a model may call itself)


def _enter(module: nn.Module, args: Any) -> None:
    if getattr(module, ATTRIBUTE, False):
        _STATE.depth += 1
        module.__dict__[_ENTERED] = module.__dict__.get(_ENTERED, 0) + 1


def _leave(module: nn.Module, args: Any, output: Any) -> Any:
    calls = module.__dict__.get(_ENTERED, 0)
    if calls <= 0:
        return None
    module.__dict__[_ENTERED] = calls - 1
    _STATE.depth -= 1
    return plain(output) if _STATE.depth == 0 else None


def _has_hooks(model: nn.Module) -> bool:
    return _enter in model._forward_pre_hooks.values()


def enable(model: nn.Module, on: bool = True) -> nn.Module:
    """Let int8 activations flow between the int8 convolutions of ``model`` in its calls (or stop it: ``on=False``).

    :func:`quanta.quantize` and :func:`quanta.load` call this on the models they return when any conv runs on
    the ``int8_conv`` kernel. Returns ``model``.
    """
    setattr(model, ATTRIBUTE, bool(on))
    if on and not _has_hooks(model):
        model.register_forward_pre_hook(_enter)
        model.register_forward_hook(_leave, always_call=True)
    return model


def can_flow(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs on a kernel that takes and gives uint8 codes (``int8_conv``)."""
    return any(getattr(getattr(m, "_kernel", None), "on_codes", None) is not None for m in model.modules())


def is_enabled(model: nn.Module) -> bool:
    """Whether calls of ``model`` let int8 activations flow between its convolutions."""
    return bool(getattr(model, ATTRIBUTE, False)) and _has_hooks(model)
