"""``QTensor``: a quantized tensor as it is stored: packed codes + per-group parameters + what it was.

``nbytes`` is the true storage: the packed codes (``ceil(bits * count / 8)`` bytes, or 2 bytes a code above 8
bits) plus every stored parameter (scales, zero points, offsets, codebooks). ``to_dict`` gives a flat dict of
plain tensors that safetensors can write, and ``from_dict`` restores it bit for bit, checking every shape and
dtype so a truncated or foreign dict fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from quanta.errors import CorruptDataError, QuantaError, UnsupportedError
from quanta.primitives.checks import cast_back
from quanta.primitives.groups import Grouping, from_2d, to_2d
from quanta.primitives.packing import packed_nbytes, unpack
from quanta.scheme import QScheme

__all__ = ["QTensor", "grouping_for", "restore_2d", "view_2d"]

FORMAT_VERSION = 1
META_KEY = "qmeta"
CODES_KEY = "codes"


def view_2d(x: torch.Tensor, scheme: QScheme, axis: int | None) -> torch.Tensor:
    """The (rows, cols) view of ``x`` that ``scheme`` groups: one row for per-tensor, else :func:`to_2d`; with
    ``rowsN`` each view row holds ``N`` consecutive output rows (one codebook each).

    Raises:
        UnsupportedError: ``rowsN`` on a tensor whose output rows are not a multiple of ``N``.
    """
    if scheme.granularity == "tensor":
        return x.reshape(1, -1)
    x2d = to_2d(x, axis)
    if scheme.granularity == "rows":
        size = int(scheme.group_size or 1)
        if x2d.shape[0] % size:
            raise UnsupportedError(
                f"{scheme}: {x2d.shape[0]} output rows are not a multiple of {size}; pick rowsN with N dividing "
                f"{x2d.shape[0]}, or a per-tensor codebook."
            )
        return x2d.reshape(x2d.shape[0] // size, -1)
    return x2d


def restore_2d(x2d: torch.Tensor, shape: torch.Size, scheme: QScheme, axis: int | None) -> torch.Tensor:
    """Invert :func:`view_2d` for a tensor of the original ``shape``."""
    if scheme.granularity == "tensor":
        return x2d.reshape(shape)
    if scheme.granularity == "rows":
        x2d = x2d.reshape(to_2d(torch.empty(shape, device="meta"), axis).shape)
    return from_2d(x2d, shape, axis)


def grouping_for(shape: torch.Size | tuple[int, ...], scheme: QScheme, axis: int | None) -> Grouping:
    """The :class:`Grouping` a tensor of ``shape`` gets under ``scheme``."""
    rows, cols = view_2d(torch.empty(shape, device="meta"), scheme, axis).shape
    size = {"tensor": cols, "channel": cols, "group": scheme.group_size, "rows": cols}[scheme.granularity]
    return Grouping(rows, cols, int(size or cols))


@dataclass(eq=False)
class QTensor:
    """A quantized tensor: packed ``codes``, per-group ``params``, the ``scheme`` and the original shape/dtype.

    Build one with :func:`quanta.quantize_tensor`; ``dequantize()`` always works.

    Attributes:
        codes: packed codes, a 1-D uint8 bit stream (1..8 bits) or int16 container (9..16 bits).
        params: stored parameters by name, each ``(rows, n_groups, ...)`` in its storage dtype.
        scheme: the :class:`QScheme` used.
        shape: shape of the original tensor.
        dtype: dtype of the original tensor (and of ``dequantize()``'s result).
        axis: the reduction axis given at quantization (``None``: Linear/Conv layout, dims 1.. are reduced).
    """

    codes: torch.Tensor
    params: dict[str, torch.Tensor]
    scheme: QScheme
    shape: torch.Size
    dtype: torch.dtype = torch.float32
    axis: int | None = None
    _grouping: Grouping | None = field(default=None, repr=False)

    @property
    def grouping(self) -> Grouping:
        if self._grouping is None:
            self._grouping = grouping_for(self.shape, self.scheme, self.axis)
        return self._grouping

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes plus every stored parameter."""
        total = self.codes.numel() * self.codes.element_size()
        return total + sum(p.numel() * p.element_size() for p in self.params.values())

    @property
    def bits_per_value(self) -> float:
        """Storage bits per original element, scale overhead included."""
        return 8.0 * self.nbytes / self.numel

    def unpacked_codes(self) -> torch.Tensor:
        """Integer codes as an int32 ``(rows, cols)`` matrix in the grouping's layout."""
        g = self.grouping
        return unpack(self.codes, self.scheme.bits, self.numel, self.scheme.fmt.signed_codes).reshape(g.rows, g.cols)

    def dequantize(self) -> torch.Tensor:
        """Reconstruct the tensor in its original shape and dtype."""
        fmt, scheme = self.scheme.fmt, self.scheme
        values = self.grouping.map(lambda c, p: fmt.decode(c, p, scheme), self.unpacked_codes(), self.params)
        return cast_back(restore_2d(values, self.shape, scheme, self.axis), self.dtype)

    def to_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat dict of plain tensors: ``{prefix}codes``, ``{prefix}<param>`` and ``{prefix}qmeta`` (JSON bytes)."""
        meta = {
            "format_version": FORMAT_VERSION,
            "scheme": str(self.scheme),
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "axis": self.axis,
        }
        out = {f"{prefix}{CODES_KEY}": self.codes}
        out.update({f"{prefix}{k}": v for k, v in self.params.items()})
        out[f"{prefix}{META_KEY}"] = torch.tensor(list(json.dumps(meta, sort_keys=True).encode()), dtype=torch.uint8)
        return out

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> QTensor:
        """Rebuild a QTensor written by :meth:`to_dict`, validating every piece.

        Raises:
            CorruptDataError: a key is missing, or a shape, dtype or size does not match the metadata.
        """
        where = f" under prefix {prefix!r}" if prefix else ""
        if not isinstance(tensors, Mapping):
            raise CorruptDataError(f"from_dict needs a dict of tensors, got {type(tensors).__name__}.")
        meta_tensor = tensors.get(f"{prefix}{META_KEY}")
        if meta_tensor is None or f"{prefix}{CODES_KEY}" not in tensors:
            raise CorruptDataError(f"no quantized tensor{where}: the '{META_KEY}' or '{CODES_KEY}' entry is missing.")
        try:
            meta = json.loads(bytes(meta_tensor.to(torch.uint8).tolist()).decode())
            version = meta["format_version"]
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"format_version must be a positive integer, got {version!r}")
            scheme = QScheme.parse(meta["scheme"])
            shape = torch.Size(int(s) for s in meta["shape"])
            dtype = getattr(torch, str(meta["dtype"]))
            axis = meta["axis"]
        except (QuantaError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"the quantized tensor metadata{where} is unreadable: {exc}") from exc
        if version > FORMAT_VERSION:
            raise CorruptDataError(
                f"quantized tensor{where} uses format version {version}; this quanta reads up to {FORMAT_VERSION}. "
                "Upgrade quanta."
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CorruptDataError(
                f"quantized tensor{where} names original dtype {meta['dtype']!r}, not a float dtype."
            )
        if axis is not None and not isinstance(axis, int):
            raise CorruptDataError(f"quantized tensor{where} has axis {axis!r}; expected an integer or null.")
        codes = tensors[f"{prefix}{CODES_KEY}"]
        if not isinstance(codes, torch.Tensor) or not isinstance(meta_tensor, torch.Tensor):
            raise CorruptDataError(f"quantized tensor{where}: codes and metadata must be tensors.")
        want_dtype = torch.int16 if scheme.bits > 8 else torch.uint8
        if codes.dtype != want_dtype:
            raise CorruptDataError(
                f"quantized tensor{where}: codes are {codes.dtype}, "
                f"but {scheme.bits}-bit codes are packed as {want_dtype}."
            )
        qt = cls(codes=codes, params={}, scheme=scheme, shape=shape, dtype=dtype, axis=axis)
        try:
            grouping = qt.grouping
        except (QuantaError, RuntimeError, ValueError) as exc:
            raise CorruptDataError(
                f"quantized tensor{where}: shape {list(shape)} with axis {axis} is inconsistent: {exc}"
            ) from exc
        for name, (trailing, param_dtype) in scheme.fmt.param_spec(scheme).items():
            value = tensors.get(f"{prefix}{name}")
            expected = (*grouping.param_shape, *trailing)
            if value is None:
                raise CorruptDataError(f"quantized tensor{where} ({scheme}) is missing its '{name}' entry.")
            if tuple(value.shape) != expected or value.dtype != param_dtype:
                raise CorruptDataError(
                    f"quantized tensor{where}: '{name}' is {value.dtype} {tuple(value.shape)}, "
                    f"expected {param_dtype} {expected} for {scheme} on shape {tuple(shape)}."
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CorruptDataError(f"quantized tensor{where}: '{name}' holds NaN or Inf values.")
            qt.params[name] = value
        problem = scheme.fmt.check_params(qt.params, scheme)
        if problem:
            raise CorruptDataError(f"quantized tensor{where} ({scheme}) has invalid parameters: {problem}.")
        want = packed_nbytes(shape.numel(), scheme.bits)
        if codes.dim() != 1 or codes.numel() * codes.element_size() != want:
            raise CorruptDataError(
                f"quantized tensor{where}: codes hold {codes.numel() * codes.element_size()} bytes, "
                f"{shape.numel()} codes of {scheme.bits} bits need {want}; the data is truncated or damaged."
            )
        return qt

    def __repr__(self) -> str:
        return (
            f"QTensor(scheme='{self.scheme}', shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"nbytes={self.nbytes}, bits_per_value={self.bits_per_value:.3f})"
        )
