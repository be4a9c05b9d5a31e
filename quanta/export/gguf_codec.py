"""QTensor <-> ggml blocks: lossless transcoding where a scheme maps onto a ggml type, requantization otherwise.

A quanta integer scheme maps onto a ggml type when its groups line up with the ggml blocks (the group size,
or the row for per-channel, is a multiple of the block) and its parameters are exactly what the block stores:

=====  =====================================================================================================
Q8_0   ``int8`` (or ``uint8``) symmetric; every scale exact in fp16 (``sf16``, or fp32/bf16 values that are)
Q4_0   ``int4``/``uint4`` symmetric with fp16-exact scales; also asymmetric blocks whose zero point is the
       middle code (8 or 7, which Q4_0 stores with a negative ``d``)
Q4_1   ``int4``/``uint4`` with a float minimum (``fmin``) whose scale and offset are exact in fp16; or
       asymmetric with an integer zero point ``z`` when the offset ``-z * scale`` is exact in fp16
Q4_K   ``q4_k:g256`` (:mod:`quanta.formats.kquant`, Q4_K's own double quantization) with ``d`` and ``dmin``
       exact in fp16 (``q4_k:g256:sf16``) on rows that are a multiple of 256; also ``int4``/``uint4`` ``fmin``
       (or ``asym``) groups of 32 whose 8 scales and 8 minima in each 256-value super-block are integer
       multiples (0..63) of one fp16 ``d`` and one fp16 ``dmin`` (what :func:`requantize` makes)
=====  =====================================================================================================

Q4_K files read by :mod:`quanta.export.gguf_import` become ``q4_k:g256:sf16`` QTensors, so import -> re-export
gives the same bytes. The codes (and scales) are carried over as they are: ggml's dequantization gives bit for
bit the values of ``QTensor.dequantize()``. A block whose codes
all sit at the zero point is written with ``d = 0``, as ggml's own quantizers write all-zero blocks; its values
are zero either way. Anything else is requantized from the dequantized weight by :func:`requantize`.
"""

from __future__ import annotations

import numpy as np
import torch

from quanta.errors import CorruptDataError, UnsupportedError
from quanta.export.ggml_blocks import BLOCKS, pack, unpack
from quanta.formats.kquant import SUPER, sub_codes_of, sub_codes_param
from quanta.primitives.affine import int_range
from quanta.primitives.packing import pack as pack_codes
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["QUANT_TYPES", "encode", "lossless_type", "requantize", "to_qtensor"]

QUANT_TYPES = tuple(BLOCKS)
_KMAX = 63  # 6-bit sub-block scales and minima of Q4_K


def _fp16_exact(x: torch.Tensor) -> bool:
    return bool((x.to(torch.float16).float() == x.float()).all()) and bool(torch.isfinite(x.half()).all())


def _matrix(qt: QTensor, block: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """Codes ``(rows, cols)`` (shifted to start at 0) and per-``block`` parameters ``(rows, cols / block)``,
    or None when the tensor's groups do not line up with ``block``-value blocks along its rows."""
    if len(qt.shape) != 2 or qt.axis not in (None, 1, -1):
        return None
    rows, cols = qt.shape
    s = qt.scheme
    group = {"tensor": cols, "channel": cols, "group": s.group_size or cols}[s.granularity]
    if cols % block or group % block:
        return None
    qmin = int_range(s.bits, s.fmt.signed_codes)[0]  # codes shifted to 0.. (narrow ranges just skip code 0)
    codes = qt.unpacked_codes().reshape(rows, cols) - qmin
    params: dict[str, torch.Tensor] = {}
    for name, value in qt.params.items():
        v = value.reshape(1, 1).expand(rows, 1) if s.granularity == "tensor" else value.reshape(rows, -1)
        params[name] = v.repeat_interleave(group // block, dim=1)[:, : cols // block]
    if "zero" in params:
        params["zero"] = params["zero"].to(torch.int32) - qmin
    elif s.mode == "sym":  # the symmetric zero point in shifted codes: -qmin (signed) or the midpoint: both 2**(b-1)
        params["zero"] = torch.full_like(params["scale"], 1 << (s.bits - 1), dtype=torch.int32)
    return codes, params


def _factor(values: torch.Tensor, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Write each row of ``values`` ``(n, 8)`` (fp32, >= 0) as ``base * k`` with fp16 ``base`` and integer
    ``k`` in 0..63, exactly in fp32; ``free`` entries may take any ``k`` (0 is used). None if some row cannot.

    The candidates are ``max / j`` for j = 63 .. 1: the row maximum is ``base * j`` for some j. The finest base
    that works is taken (ggml's quantizers give the largest entry j = 63), all candidates at once per chunk.
    """
    v = torch.where(free, torch.zeros_like(values), values)
    j = torch.arange(_KMAX, 0, -1, dtype=torch.float32)  # (63,)
    bases, ints = [], []
    for chunk in v.split(4096):
        vmax = chunk.amax(dim=1, keepdim=True)  # (c, 1)
        cand = (vmax / j).to(torch.float16).float()  # (c, 63)
        safe = torch.where(cand > 0, cand, 1.0)
        n = torch.round(chunk[:, None, :] / safe[..., None])  # (c, 63, 8)
        ok = ((n <= _KMAX) & (safe[..., None] * n == chunk[:, None, :])).all(dim=2) & (cand > 0)
        ok[:, -1] |= vmax[:, 0] == 0  # an all-zero row: base 0
        if not bool(ok.any(dim=1).all()):
            return None
        first = ok.to(torch.int8).argmax(dim=1)  # the largest j that works
        rows = torch.arange(chunk.shape[0])
        zero = vmax[:, 0] == 0
        bases.append(torch.where(zero, 0.0, cand[rows, first]).to(torch.float16))
        ints.append(torch.where(zero[:, None], 0.0, n[rows, first]).to(torch.int32))
    return torch.cat(bases), torch.cat(ints)


def lossless_type(qt: QTensor) -> tuple[str | None, str]:
    """The ggml type ``qt`` transcodes to without requantization, and why not when there is none.

    Returns:
        ``(type, "")`` (``Q8_0``, ``Q4_0``, ``Q4_1`` or ``Q4_K``), or ``(None, reason)``.
    """
    kind, reason, _ = _plan(qt)
    return kind, reason


def _plan(qt: QTensor) -> tuple[str | None, str, dict[str, np.ndarray] | None]:
    """``(type, reason, Q4_K fields)``: the work of :func:`lossless_type`, keeping Q4_K's factorization."""
    s = qt.scheme
    if s.format == "q4_k":
        return _kquant_plan(qt)
    if not s.is_integer or s.bits not in (4, 8):
        return None, f"{s} is not a 4- or 8-bit integer scheme", None
    if s.bits == 8:
        m = _matrix(qt, 32)
        if m is None or s.mode != "sym":
            return None, f"{s} on shape {tuple(qt.shape)} is not symmetric groups of a multiple of 32 along rows", None
        return ("Q8_0", "", None) if _fp16_exact(m[1]["scale"]) else (None, f"{s} has scales fp16 cannot hold", None)
    if s.narrow and s.mode == "fmin":  # the minimum would sit at code 1 of the 16
        return None, f"{s} puts its float minimum on the narrow range's first code, which no ggml type does", None
    m = _matrix(qt, 32)
    if m is None:
        return None, f"{s} on shape {tuple(qt.shape)} has groups that are not a multiple of 32 along rows", None
    scale = m[1]["scale"]
    if s.mode != "fmin" and bool(torch.isin(m[1]["zero"], torch.tensor([7, 8])).all()) and _fp16_exact(scale):
        return "Q4_0", "", None
    fields = _k_fields(qt)
    if fields is not None:
        return "Q4_K", "", fields
    if _fp16_exact(scale) and _fp16_exact(_offset(m[1])):
        return "Q4_1", "", None
    return (
        None,
        f"{s} has scales or offsets that neither fp16 (Q4_0/Q4_1) nor Q4_K's 6-bit sub-scales hold exactly",
        None,
    )


def _kquant_plan(qt: QTensor) -> tuple[str | None, str, dict[str, np.ndarray] | None]:
    """A ``q4_k`` QTensor's Q4_K fields: its own ``d``, ``dmin``, 6-bit codes and 4-bit codes, unchanged."""
    s = qt.scheme
    if len(qt.shape) != 2 or qt.axis not in (None, 1, -1) or qt.shape[1] % SUPER:
        return None, f"{s} on shape {tuple(qt.shape)} does not have rows that are a multiple of {SUPER}", None
    d, dmin = qt.params["d"].reshape(-1), qt.params["dmin"].reshape(-1)
    if not (_fp16_exact(d) and _fp16_exact(dmin)):
        return None, f"{s} has super-block scales fp16 cannot hold (use q4_k:g256:sf16)", None
    sc, mn = sub_codes_of(qt.params["sub_codes"].reshape(-1, 12))
    fields = {
        "d": d.to(torch.float16).numpy(),
        "dmin": dmin.to(torch.float16).numpy(),
        "sc": sc.numpy(),
        "mn": mn.numpy(),
        "q": qt.unpacked_codes().reshape(-1, SUPER).numpy(),
    }
    return "Q4_K", "", fields


def _offset(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The value of code 0 in each block: the float minimum, or ``-zero * scale``."""
    if "offset" in params:
        return params["offset"].float()
    return -params["zero"].float() * params["scale"].float()


def _k_fields(qt: QTensor) -> dict[str, np.ndarray] | None:
    """Q4_K fields of ``qt`` (a 4-bit scheme), or None when it does not factor exactly."""
    m = _matrix(qt, 32)
    if m is None or qt.shape[1] % 256:
        return None
    codes, params = m
    rows, cols = codes.shape
    n = rows * cols // 256
    scale, neg_min = params["scale"].float().reshape(n, 8), (-_offset(params)).reshape(n, 8)
    if bool((neg_min < 0).any()):
        return None  # Q4_K subtracts a non-negative minimum
    q = codes.reshape(n, 8, 32)
    d = _factor(scale, (q == 0).all(dim=2))
    dm = _factor(neg_min, torch.zeros_like(neg_min, dtype=torch.bool))
    if d is None or dm is None:
        return None
    return {
        "d": d[0].numpy(),
        "sc": d[1].numpy(),
        "dmin": dm[0].numpy(),
        "mn": dm[1].numpy(),
        "q": codes.reshape(n, 256).numpy(),
    }


def encode(qt: QTensor, kind: str) -> np.ndarray:
    """The ggml bytes ``(rows, row_bytes)`` of ``qt`` as ``kind``, codes and scales carried over unchanged.

    Raises:
        UnsupportedError: ``qt`` does not map onto ``kind`` losslessly (see :func:`lossless_type`).
    """
    found, reason, k_fields = _plan(qt)
    if found != kind and not (kind == "Q4_1" and found in ("Q4_0", "Q4_K") and _fits_q4_1(qt)):
        raise UnsupportedError(f"{qt.scheme} does not transcode to {kind} losslessly ({reason or found}).")
    rows = qt.shape[0]
    if kind == "Q4_K":
        assert k_fields is not None
        return pack("Q4_K", k_fields).reshape(rows, -1)
    m = _matrix(qt, 32)
    assert m is not None
    codes, params = m
    q = codes.reshape(-1, 32)
    scale = params["scale"].float().reshape(-1)
    zero = params["zero"].reshape(-1) if "zero" in params else None
    idle = (q == (0 if zero is None else zero[:, None])).all(dim=1)  # every code at the zero point: d = 0
    d = torch.where(idle, 0.0, scale)
    if kind == "Q8_0":
        assert zero is not None
        fields = {"d": d, "q": q - zero[:, None]}
    elif kind == "Q4_0":
        assert zero is not None
        flip = zero == 7  # zero point 7: x = s * (q - 7) = (-s) * ((15 - q) - 8)
        fields = {
            "d": torch.where(idle, 0.0, torch.where(flip, -scale, scale)),
            "q": torch.where(flip[:, None], 15 - q, q),
        }
    else:
        fields = {"d": torch.where(q.eq(0).all(dim=1), 0.0, scale), "m": _offset(params).reshape(-1), "q": q}
    as_np = {k: (v.to(torch.float16) if v.is_floating_point() else v).numpy() for k, v in fields.items()}
    return pack(kind, as_np).reshape(rows, -1)


def _fits_q4_1(qt: QTensor) -> bool:
    if qt.scheme.format == "q4_k":  # its sub-block steps d * sc are generally not exact in fp16
        return False
    m = _matrix(qt, 32)
    return m is not None and _fp16_exact(m[1]["scale"]) and _fp16_exact(_offset(m[1]))


def requantize(w: torch.Tensor, kind: str) -> QTensor:
    """Quantize a float ``(rows, cols)`` matrix to a QTensor that transcodes to ``kind`` losslessly.

    Q8_0, Q4_0 and Q4_1 use quanta's own ``int8:g32:sf16``, ``int4:g32:sf16`` and ``uint4:g32:fmin:sf16``.
    Q4_K is double-quantized here: each 32-value sub-block gets the range ``[min(x, 0), max(x)]``; its minimum
    and step become 6-bit multiples of one fp16 ``dmin`` and ``d`` per 256 values, each rounded *outward* so
    that no value is clipped, and the codes are rounded to nearest (error at most half the sub-block's step).

    Raises:
        UnsupportedError: ``kind`` is not a quantized ggml type, or the row length is not a multiple of its block.
    """
    from quanta.codec import quantize_tensor

    if kind not in BLOCKS:
        raise UnsupportedError(f"cannot requantize to {kind!r}; ggml types quanta writes: {', '.join(BLOCKS)}.")
    rows, cols = w.shape
    if cols % BLOCKS[kind].values:
        raise UnsupportedError(f"rows of {cols} values are not a multiple of {kind}'s block {BLOCKS[kind].values}.")
    if kind != "Q4_K":
        scheme = {"Q8_0": "int8:g32:sf16", "Q4_0": "int4:g32:sf16", "Q4_1": "uint4:g32:fmin:sf16"}[kind]
        return quantize_tensor(w.float(), scheme)
    x = w.float().reshape(-1, 8, 32)  # (super-blocks, sub-blocks, values)
    lo = x.amin(dim=2).clamp(max=0)
    neg_min = -lo
    dmin = _up16(neg_min.amax(dim=1) / _KMAX)  # (n,)
    mn = torch.where(dmin[:, None] > 0, torch.ceil(neg_min / dmin[:, None].clamp(min=1e-30)), 0).clamp(max=_KMAX)
    offset = -(dmin[:, None] * mn)  # <= the sub-block minimum
    step = (x.amax(dim=2) - offset) / 15  # (n, 8): covers up to the sub-block maximum
    d = _up16(step.amax(dim=1) / _KMAX)
    sc = torch.where(d[:, None] > 0, torch.ceil(step / d[:, None].clamp(min=1e-30)), 0).clamp(max=_KMAX)
    scale = d[:, None] * sc
    safe = torch.where(scale > 0, scale, 1.0)
    q = torch.where(scale[..., None] > 0, torch.round((x - offset[..., None]) / safe[..., None]), 0).clamp(0, 15)
    q = q.to(torch.int32)
    scale = torch.where((q == 0).all(dim=2), 1.0, safe)  # a sub-block left with no code above 0 is free
    return _k_qtensor(q.reshape(rows, cols), scale.reshape(rows, -1), offset.reshape(rows, -1))


def _up16(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest fp16 at or above it (fp16 steps must cover the range), as fp32."""
    h = x.to(torch.float16)
    h = torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)
    return h.float()


def _k_qtensor(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> QTensor:
    """A ``uint4:g32:fmin`` QTensor (fp32 scale and offset per 32 values) from codes 0..15 ``(rows, cols)``."""
    rows, cols = q.shape
    scheme = QScheme.parse("uint4:g32:fmin")
    params = {"scale": scale.float().reshape(rows, -1), "offset": offset.float().reshape(rows, -1)}
    return QTensor(pack_codes(q.reshape(-1), 4), params, scheme, torch.Size((rows, cols)))


def to_qtensor(kind: str, data: np.ndarray, rows: int, cols: int) -> QTensor:
    """A QTensor holding ggml ``kind`` blocks ``data`` of a ``(rows, cols)`` matrix, codes preserved.

    Q8_0 -> ``int8:g32:sf16``; Q4_0 -> ``uint4:g32:asym:sf16`` (zero point 8, or 7 where ``d < 0``, with the
    codes mirrored); Q4_1 -> ``uint4:g32:fmin:sf16``; Q4_K -> ``q4_k:g256:sf16``, every field as it is (so its
    bytes come back unchanged). A Q8_0/Q4_0/Q4_1 block with ``d = 0`` holds the same values with scale 1 and
    every code at its zero point.

    Raises:
        CorruptDataError: the byte count does not fit the shape, or a block holds NaN, Inf or a sign that no
            ggml quantizer writes (a negative ``d`` in Q8_0 with code -128, or in Q4_1).
    """
    block = BLOCKS[kind]
    if cols % block.values or data.size != rows * cols // block.values * block.nbytes:
        raise CorruptDataError(f"{kind} data of {data.size} bytes does not fit a ({rows}, {cols}) matrix.")
    f = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in unpack(kind, data.reshape(-1, block.nbytes)).items()}
    floats = [v for k, v in f.items() if k in ("d", "m", "dmin")]
    if any(not bool(torch.isfinite(v.float()).all()) for v in floats):
        raise CorruptDataError(f"{kind} blocks hold NaN or Inf scales; the file is damaged.")
    q = f["q"].to(torch.int32)
    d = f["d"].float()
    if kind == "Q4_K":  # q4_k holds every Q4_K field (any sign of d, dmin): nothing is changed
        n = cols // SUPER
        params = {
            "d": f["d"].reshape(rows, n),
            "dmin": f["dmin"].reshape(rows, n),
            "sub_codes": sub_codes_param(f["sc"].to(torch.int32), f["mn"].to(torch.int32)).reshape(rows, n, 12),
        }
        return QTensor(pack_codes(q.reshape(-1), 4), params, QScheme.parse("q4_k:g256:sf16"), torch.Size((rows, cols)))
    idle = d == 0
    if kind == "Q8_0":
        flip = d < 0
        if bool((flip[:, None] & (q == -128)).any()):
            raise CorruptDataError("Q8_0 block with a negative d and code -128 cannot be held as int8; unsupported.")
        q = torch.where(flip[:, None], -q, q)
        q = torch.where(idle[:, None], 0, q)
        scheme, params = QScheme.parse("int8:g32:sf16"), {}
        codes = pack_codes(q.reshape(-1), 8, signed=True)
    elif kind == "Q4_0":
        flip = d < 0
        q = torch.where(flip[:, None], 15 - q, q)
        zero = torch.where(flip, 7, 8).to(torch.uint8)
        q = torch.where(idle[:, None], zero[:, None].int(), q)
        scheme, params = QScheme.parse("uint4:g32:asym:sf16"), {"zero": zero.reshape(rows, -1)}
        codes = pack_codes(q.reshape(-1), 4)
    else:
        if bool((d < 0).any()):
            raise CorruptDataError("Q4_1 blocks with a negative d: no ggml quantizer writes them.")
        q = torch.where(idle[:, None], 0, q)
        scheme, params = QScheme.parse("uint4:g32:fmin:sf16"), {"offset": f["m"].reshape(rows, -1)}
        codes = pack_codes(q.reshape(-1), 4)
    scale16 = torch.where(idle, 1.0, d.abs()).to(torch.float16).reshape(rows, -1)
    return QTensor(codes, {"scale": scale16, **params}, scheme, torch.Size((rows, cols)))
