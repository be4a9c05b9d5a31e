"""Read quantized Hugging Face checkpoints into quanta QTensors, codes preserved: compressed-tensors
``pack-quantized``, GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ GEMM).

Each format's convention, as quanta schemes (``x_hat = (q - z) * s`` in every case):

* compressed-tensors: signed codes and zero points -> ``int{b}`` (``sym``, or ``asym`` with the stored zero
  points); a ``quanta`` entry in config.json (written by :mod:`quanta.export.hf`) restores the exact original
  scheme (``uint`` codes, the group size before a ragged split, fp16 scales) when the tensors agree with it.
* GPTQ: unsigned codes; ``qweight`` packed down the input rows, ``qzeros`` across the output columns, fp16
  ``scales`` per group, ``g_idx`` the group of each input row. ``checkpoint_format: gptq`` (AutoGPTQ, the
  default) stores ``zero - 1``, ``gptq_v2`` (GPTQModel) the zero itself. -> ``uint{b}:g{G}:asym:sf16``, or
  ``uint{b}:g{G}:sf16`` (symmetric, zero ``2**(b-1)``) when every zero is the midpoint.
* AWQ: unsigned 4-bit codes packed across the output columns in the order ``[0, 2, 4, 6, 1, 3, 5, 7]``, zeros
  alike, no ``- 1`` -> ``uint4:g{G}:asym:sf16``.

Act-order GPTQ (``desc_act``): when ``g_idx`` is not ``i // G``, quanta's contiguous groups can hold the layer
only with its input columns reordered. :func:`gptq_to_qtensor` does that and returns the column order (so
``W[:, order] == qt.dequantize()``); the model loader (:mod:`quanta.export.hf_model`) raises
:class:`~quanta.errors.UnsupportedError` for such layers, because a quanta Linear has no input permutation.
"""

from __future__ import annotations

from typing import Any

import torch

from quanta.errors import CorruptDataError, QuantaError, UnsupportedError
from quanta.export.hf_layouts import unpack_awq, unpack_dense, unpack_gptq_cols, unpack_gptq_rows
from quanta.primitives.packing import pack
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = ["awq_to_qtensor", "ct_to_qtensor", "gptq_to_qtensor"]

_SCALE_TOKENS = {torch.float32: "", torch.float16: ":sf16", torch.bfloat16: ":sbf16"}


def _qtensor(codes: torch.Tensor, params: dict[str, torch.Tensor], scheme: str) -> QTensor:
    """A QTensor from ``(out, in)`` integer codes and ``(out, groups)`` parameters, validated as a file would be."""
    qs = QScheme.parse(scheme)
    if "zero" in params:
        params["zero"] = params["zero"].to(qs.fmt.param_spec(qs)["zero"][1])
    tensors = QTensor(pack(codes.reshape(-1), qs.bits, qs.fmt.signed_codes), params, qs, codes.shape).to_dict()
    return QTensor.from_dict(tensors)  # checks shapes, dtypes, code and zero ranges, positive scales


def _scale_token(scales: torch.Tensor) -> str:
    if scales.dtype not in _SCALE_TOKENS:
        raise CorruptDataError(f"scales are {scales.dtype}; quantized checkpoints store fp32, fp16 or bf16 scales.")
    return _SCALE_TOKENS[scales.dtype]


def _granularity(groups: int, cols: int) -> tuple[str, int]:
    if groups < 1 or cols % groups:
        raise CorruptDataError(f"{groups} scale groups do not divide {cols} input columns evenly.")
    return ("ch", cols) if groups == 1 else (f"g{cols // groups}", cols // groups)


def ct_to_qtensor(tensors: dict[str, torch.Tensor], args: dict[str, Any], hint: str | None = None) -> QTensor:
    """One compressed-tensors ``pack-quantized`` weight (``weight_packed``, ``weight_scale``, ``weight_shape``,
    ``weight_zero_point`` when asymmetric) as a QTensor; ``hint`` (a quanta scheme string) is used when exact.

    Raises:
        UnsupportedError: not an integer scheme of 1..8 bits, or a strategy other than tensor/channel/group.
        CorruptDataError: tensors missing or inconsistent with each other.
    """
    bits, strategy = int(args.get("num_bits", 8)), str(args.get("strategy") or "tensor")
    if args.get("type", "int") != "int" or not 1 <= bits <= 8 or strategy not in ("tensor", "channel", "group"):
        raise UnsupportedError(
            f"compressed-tensors weights {args} are not read: quanta reads pack-quantized int1..int8 weights with "
            "strategy tensor, channel or group."
        )
    try:
        rows, cols = (int(v) for v in tensors["weight_shape"].tolist())
        scale = tensors["weight_scale"].reshape(rows if strategy != "tensor" else 1, -1)
        half = 1 << (bits - 1)
        codes = unpack_dense(tensors["weight_packed"], bits, cols) - half  # signed, (out, in)
        params = {"scale": scale.contiguous()}
        if not args.get("symmetric", True):
            zp = tensors["weight_zero_point"]
            zero = zp.reshape(1, 1).long() if strategy == "tensor" else unpack_dense(zp.T.contiguous(), bits, rows).T
            params["zero"] = zero.contiguous() - (0 if strategy == "tensor" else half)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CorruptDataError(f"compressed-tensors weight is incomplete or inconsistent: {exc}") from exc
    granularity = "tensor" if strategy == "tensor" else _granularity(scale.shape[1], cols)[0]
    mode = "" if args.get("symmetric", True) else ":asym"
    direct = _qtensor(codes, dict(params), f"int{bits}:{granularity}{mode}{_scale_token(scale)}")
    restored = _restore(codes, params, hint, bits) if hint else None
    return restored if restored is not None else direct


def _restore(codes: torch.Tensor, params: dict[str, torch.Tensor], hint: str, bits: int) -> QTensor | None:
    """The QTensor of the original quanta scheme ``hint`` when the file's tensors hold it exactly, else None."""
    try:
        qs = QScheme.parse(hint)
    except QuantaError:
        return None
    if not qs.is_integer or qs.bits != bits or ("zero" in params) != (qs.mode == "asym"):
        return None
    cols = codes.shape[1]
    shift = 0 if qs.fmt.signed_codes else 1 << (bits - 1)
    written = params["scale"].shape[1]
    size = cols // written  # columns per written group
    out: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        if qs.granularity == "tensor":
            picked, expanded = value[:1, :1], value[:1, :1].expand_as(value)
        else:
            g = cols if qs.granularity == "channel" else min(int(qs.group_size or cols), cols)
            if g % size:
                return None
            first = torch.arange(-(-cols // g)) * g // size  # first written group of each quanta group
            picked = value[:, first]
            expanded = picked[:, torch.arange(written) * size // g]
        if not torch.equal(expanded, value):
            return None  # the written groups do not repeat one value per quanta group
        out[name] = picked.contiguous()
    want = qs.fmt.param_spec(qs)["scale"][1]
    if not torch.equal(out["scale"].to(want).to(out["scale"].dtype), out["scale"]):
        return None
    out["scale"] = out["scale"].to(want)
    if "zero" in out:
        out["zero"] = out["zero"] + shift
    try:
        return _qtensor(codes + shift, out, hint)
    except QuantaError:
        return None


def _groups_order(g_idx: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """``None`` when ``g_idx`` is the contiguous ``i // G``; else the column order that makes groups contiguous.

    Raises:
        CorruptDataError: some group does not hold exactly ``group_size`` rows (no reordering can help).
    """
    rows = g_idx.numel()
    expected = torch.arange(rows) // group_size
    if torch.equal(g_idx.long(), expected):
        return None
    order = torch.argsort(g_idx.long(), stable=True)
    if not torch.equal(g_idx.long()[order], expected):
        raise CorruptDataError(f"g_idx does not put exactly {group_size} input rows in each group.")
    return order


def gptq_to_qtensor(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    bits: int,
    checkpoint_format: str = "gptq",
) -> tuple[QTensor, torch.Tensor | None]:
    """One GPTQ layer as a QTensor ``(out, in)`` and the input-column order (``None`` unless act-order).

    Raises:
        UnsupportedError: an old-format zero of 0 (stored as ``-1``, which AutoGPTQ reads as ``2**bits``).
        CorruptDataError: packed shapes that disagree.
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedError(f"GPTQ checkpoint_format {checkpoint_format!r}; quanta reads 'gptq' and 'gptq_v2'.")
    codes_t = unpack_gptq_rows(qweight, bits)  # (in, out)
    zeros = unpack_gptq_cols(qzeros, bits) + (1 if checkpoint_format == "gptq" else 0)  # (groups, out)
    cols, rows = codes_t.shape
    if scales.shape != zeros.shape or scales.shape[1] != rows:
        raise CorruptDataError(f"GPTQ scales {tuple(scales.shape)} and qzeros {tuple(zeros.shape)} disagree.")
    if bool((zeros >= 1 << bits).any()):
        raise UnsupportedError(
            f"this GPTQ layer has a zero point of {1 << bits} (old AutoGPTQ format storing zero 0 as -1); "
            f"uint{bits} zero points end at {(1 << bits) - 1}. Re-export it with checkpoint_format gptq_v2."
        )
    granularity, g = _granularity(scales.shape[0], cols)
    order = _groups_order(g_idx, g) if g_idx is not None else None
    codes = (codes_t if order is None else codes_t[order]).T.contiguous()
    sym = bool((zeros == 1 << (bits - 1)).all())
    params = {"scale": scales.T.contiguous()} if sym else {"scale": scales.T.contiguous(), "zero": zeros.T.contiguous()}
    scheme = f"uint{bits}:{granularity}{'' if sym else ':asym'}{_scale_token(scales)}"
    return _qtensor(codes, params, scheme), order


def awq_to_qtensor(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> QTensor:
    """One AWQ GEMM layer (4-bit, zero points) as a QTensor ``(out, in)``.

    Raises:
        CorruptDataError: packed shapes that disagree.
    """
    codes = unpack_awq(qweight).T.contiguous()  # (out, in)
    zeros = unpack_awq(qzeros)  # (groups, out)
    if scales.shape != zeros.shape or scales.shape[1] != codes.shape[0]:
        raise CorruptDataError(f"AWQ scales {tuple(scales.shape)} and qzeros {tuple(zeros.shape)} disagree.")
    granularity, _ = _granularity(scales.shape[0], codes.shape[1])
    params = {"scale": scales.T.contiguous(), "zero": zeros.T.contiguous()}
    return _qtensor(codes, params, f"uint4:{granularity}:asym{_scale_token(scales)}")
