"""What every vector quantizer shares: input checks, the faiss code layout, and the codec interface.

Arrays in, arrays out: methods accept a numpy array or a torch tensor of shape ``(n, d)`` and answer in the same
kind (numpy in -> numpy out; torch in -> torch out, on the quantizer's device). Computation is float32. Learned
state (codebooks, rotations) is kept as torch tensors on the quantizer's device.

Code layout (faiss's ``PQEncoderGeneric`` / ``BitstringWriter``): each vector's sub-codes ``c_0 .. c_{m-1}`` of
``nbits`` bits are written into one little-endian bit stream, least significant bit first, sub-code ``j`` at bits
``[j * nbits, (j + 1) * nbits)``; the stream is padded with zero bits to ``code_size = ceil(m * nbits / 8)`` bytes.
With ``nbits = 8`` that is one byte per sub-quantizer; with ``nbits = 4`` the first sub-code is the low nibble.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

import numpy as np
import torch

from quanta.errors import BitWidthError, InvalidTensorError, NonFiniteError, NotFittedError

__all__ = ["Array", "NotFittedError", "VectorQuantizer", "code_bytes", "pack_codes", "unpack_codes"]

Array = np.ndarray | torch.Tensor
"""A numpy array or a torch tensor; results come back as the kind that went in."""

MAX_NBITS = 16
"""Sub-codes of up to 16 bits (65,536 codebook entries): beyond that k-means training is impractical."""

_Q = TypeVar("_Q", bound="VectorQuantizer")


def default_device(device: str | torch.device | None) -> torch.device:
    """The device to compute on: the one given, else CPU."""
    return torch.device(device) if device is not None else torch.device("cpu")


def as_matrix(x: object, name: str, device: torch.device, dim: int | None = None) -> tuple[torch.Tensor, bool]:
    """``x`` as a finite float32 ``(n, d)`` tensor on ``device``, and whether it came in as numpy.

    Raises:
        InvalidTensorError: not an array, not 2-D, empty, or (with ``dim``) the wrong number of columns.
        NonFiniteError: a NaN or Inf value; the message names the first bad row.
    """
    was_numpy = isinstance(x, np.ndarray)
    if was_numpy:
        assert isinstance(x, np.ndarray)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise InvalidTensorError(f"{name} must hold real numbers, got a numpy array of dtype {x.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    elif isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise InvalidTensorError(f"{name} must hold real numbers, got a tensor of dtype {x.dtype}.")
        t = x.detach()
    else:
        raise InvalidTensorError(
            f"{name} must be a numpy array or a torch tensor of shape (n, d), got {type(x).__name__}; "
            "wrap it with np.asarray()."
        )
    if t.dim() != 2:
        raise InvalidTensorError(
            f"{name} must be 2-D (n vectors, d dimensions), got shape {tuple(t.shape)}; reshape it to (n, -1)."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InvalidTensorError(f"{name} is empty (shape {tuple(t.shape)}); there is nothing to quantize.")
    if dim is not None and t.shape[1] != dim:
        raise InvalidTensorError(f"{name} has {t.shape[1]} dimensions, but the quantizer was fitted on {dim}.")
    t = t.to(device=device, dtype=torch.float32)
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0]
        n_nan = int(torch.isnan(t).any(dim=1).sum())
        raise NonFiniteError(
            f"{name} has {bad.numel()} vectors with NaN or Inf values ({n_nan} with NaN), the first at row "
            f"{int(bad[0])}; drop or impute them before quantizing."
        )
    return t.contiguous(), was_numpy


def as_codes(codes: object, code_size: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``codes`` as a uint8 ``(n, code_size)`` tensor on ``device``, and whether it came in as numpy."""
    was_numpy = isinstance(codes, np.ndarray)
    if was_numpy:
        assert isinstance(codes, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(codes))
    elif isinstance(codes, torch.Tensor):
        t = codes.detach()
    else:
        raise InvalidTensorError(f"codes must be a numpy array or a torch tensor, got {type(codes).__name__}.")
    if t.dtype != torch.uint8 or t.dim() != 2 or t.shape[1] != code_size:
        raise InvalidTensorError(
            f"codes must be uint8 of shape (n, {code_size}) (code_size bytes per vector), got {t.dtype} of shape "
            f"{tuple(t.shape)}; pass what encode() returned."
        )
    return t.to(device), was_numpy


def out(t: torch.Tensor, as_numpy: bool) -> Array:
    """Return ``t`` as numpy (copied to the CPU) or as the tensor itself."""
    return t.cpu().numpy() if as_numpy else t


def check_nbits(nbits: int) -> int:
    """Return ``nbits`` if it is an integer in 1..16."""
    if isinstance(nbits, bool) or not isinstance(nbits, int) or not 1 <= nbits <= MAX_NBITS:
        raise BitWidthError(f"nbits must be an integer in 1..{MAX_NBITS} (bits per sub-code), got {nbits!r}.")
    return nbits


def check_positive(value: int, name: str) -> int:
    """Return ``value`` if it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidTensorError(f"{name} must be a positive integer, got {value!r}.")
    return value


def code_bytes(m: int, nbits: int) -> int:
    """Bytes per vector of ``m`` sub-codes of ``nbits`` bits: ``ceil(m * nbits / 8)`` (faiss's ``code_size``)."""
    return -(-m * nbits // 8)


def pack_codes(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Pack integer sub-codes ``(n, m)`` into faiss's layout, a uint8 ``(n, code_bytes(m, nbits))`` tensor.

    Example:
        >>> pack_codes(torch.tensor([[1, 2, 3]]), nbits=4)
        tensor([[33,  3]], dtype=torch.uint8)
    """
    n, m = codes.shape
    if nbits == 8:
        return codes.to(torch.uint8)
    size = code_bytes(m, nbits)
    shifts = torch.arange(nbits, device=codes.device, dtype=torch.int64)
    bits = ((codes.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(n, m * nbits)  # (n, m * nbits), LSB first
    bits = torch.nn.functional.pad(bits, (0, size * 8 - m * nbits)).reshape(n, size, 8)
    weights = 1 << torch.arange(8, device=codes.device, dtype=torch.int64)
    return (bits * weights).sum(dim=2).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, m: int, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``(n, m)`` int64 sub-codes."""
    if nbits == 8:
        return packed.to(torch.int64)
    n = packed.shape[0]
    byte_shifts = torch.arange(8, device=packed.device, dtype=torch.int64)
    bits = ((packed.to(torch.int64).unsqueeze(-1) >> byte_shifts) & 1).reshape(n, -1)[:, : m * nbits]
    weights = 1 << torch.arange(nbits, device=packed.device, dtype=torch.int64)
    return (bits.reshape(n, m, nbits) * weights).sum(dim=2)


class VectorQuantizer(ABC):
    """A codec for vectors: ``fit(X)`` learns codebooks, ``encode`` gives packed codes, ``decode`` vectors.

    Subclasses also give asymmetric-distance lookup tables, which :class:`quanta.vq.ADCIndex` sums: the squared
    distance from query ``q`` to a coded vector with sub-codes ``c`` is
    ``sum_j T[q, j, c_j] + vector_term(c) + query_term(q)``.
    """

    m_codes: int
    nbits: int
    device: str | torch.device | None
    d_: int  # the fitted dimension, set by fit()

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector: ``ceil(number of sub-codes * nbits / 8)``."""
        return code_bytes(self.m_codes, self.nbits)

    @property
    def ksub(self) -> int:
        """Entries per codebook: ``2 ** nbits``."""
        return 1 << self.nbits

    @property
    def device_(self) -> torch.device:
        return default_device(self.device)

    @abstractmethod
    def fit(self: _Q, X: Array) -> _Q:
        """Learn the codebooks from training vectors ``(n, d)``; return ``self``."""

    @abstractmethod
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-codes ``(n, m_codes)`` int64 of float32 vectors ``(n, d)``."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Vectors ``(n, d)`` of sub-codes ``(n, m_codes)``."""

    @abstractmethod
    def _tables(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lookup tables ``(nq, m_codes, ksub)`` of queries ``(nq, d)``, and the per-query term ``(nq,)`` if any."""

    def _vector_terms(self, codes: torch.Tensor) -> torch.Tensor | None:
        """Per-vector distance term ``(n,)`` of sub-codes ``(n, m_codes)``, or None when the tables are complete."""
        return None

    def _check_fitted(self) -> int:
        """The fitted dimension, or :class:`NotFittedError`."""
        if not hasattr(self, "d_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) with training vectors first."
            )
        return int(self.d_)

    def encode(self, X: Array) -> Array:
        """Packed codes of vectors ``(n, d)``: uint8 ``(n, code_size)`` in faiss's layout (see the module docs).

        Raises:
            NotFittedError: before :meth:`fit`.
            InvalidTensorError: ``X`` is not ``(n, d)`` with the fitted ``d``.
            NonFiniteError: ``X`` holds NaN or Inf.
        """
        d = self._check_fitted()
        x, as_numpy = as_matrix(X, "X", self.device_, d)
        return out(pack_codes(self._encode(x), self.nbits), as_numpy)

    def decode(self, codes: Array) -> Array:
        """Reconstructed float32 vectors ``(n, d)`` of packed codes ``(n, code_size)``."""
        self._check_fitted()
        packed, as_numpy = as_codes(codes, self.code_size, self.device_)
        return out(self._decode(unpack_codes(packed, self.m_codes, self.nbits)), as_numpy)

    def reconstruction_mse(self, X: Array) -> float:
        """Mean over vectors of the squared reconstruction error ``||x - decode(encode(x))||^2`` (faiss's MSE)."""
        d = self._check_fitted()
        x, _ = as_matrix(X, "X", self.device_, d)
        return float(((x - self._decode(self._encode(x))) ** 2).sum(dim=1).mean())

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_") and v is not None)
        return f"{type(self).__name__}({settings})"
