"""``q4_k``: llama.cpp's Q4_K, a double-quantized 4-bit grid in super-blocks of 256 values.

A super-block (one group of the scheme, so the granularity is always ``g256``) is 8 sub-blocks of 32 values.
Sub-block ``j`` has its own 16-level grid, given by two 6-bit codes ``sc_j``, ``mn_j`` (0..63) and the
super-block's two float scales ``d`` and ``dmin``::

    x_hat = (d * sc_j) * q - dmin * mn_j        q in 0..15

computed in fp32 in exactly that order, as ggml does, so the values are bit for bit those of
``gguf.quants.dequantize`` on the same block. Stored per super-block: ``d`` and ``dmin`` in the scheme's scale
dtype (fp16 with ``sf16``: exactly Q4_K, ``q4_k:g256:sf16``) and ``sub_codes`` ``(rows, n_groups, 12)`` uint8,
the 16 six-bit codes ``sc_0..sc_7, mn_0..mn_7`` as a little-endian bit stream (quanta's 6-bit packing). With
the 128 bytes of 4-bit codes that is 144 bytes per 256 values, 4.5 bits a weight, as Q4_K.

Fitting follows llama.cpp's ``make_qkx2_quants`` + ``quantize_row_q4_K_ref`` (written anew here): each sub-block
gets a step and a minimum from an error-minimising search (start: ``min(x, 0)`` and ``range / 15``; then 21
candidate grids of ``14 .. 16`` steps over the range from the best minimum so far, each refined by weighted least
squares of ``x ~ step * q + min``, weights ``sqrt(mean x^2) + |x|`` or the importance ``weight`` given to
``fit``; the lowest weighted error wins), then ``d = max step / 63`` and
``dmin = max(-min) / 63`` are rounded to the scale dtype and the 6-bit codes are rounded to nearest. Encoding is
nearest-level on each sub-block's grid, so values inside it are within half a step ``d * sc_j``; the search
may clip a few extreme values where that lowers the weighted error.

A row whose length is not a multiple of 256 ends in a short super-block: its sub-blocks past the end have
``sc = mn = 0``. Such tensors are not Q4_K-representable (GGUF export stores them as float).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from quanta.errors import UnsupportedError
from quanta.formats.base import SCALE_DTYPES, Format, Params, register_family
from quanta.primitives.affine import storage_param
from quanta.primitives.packing import pack, unpack

if TYPE_CHECKING:
    from quanta.scheme import QScheme

__all__ = ["SUB", "SUPER", "KQuantFormat", "sub_codes_of", "sub_codes_param"]

SUPER, SUB = 256, 32
"""Values per super-block (one group) and per sub-block."""
N_SUB = SUPER // SUB
KMAX, QMAX = 63, 15
"""Largest 6-bit sub-block code and largest 4-bit value code."""
SEARCH = torch.arange(21) * 0.1 - 1.0
"""Offsets of llama.cpp's search: candidate inverse steps ``(15 + t) / range`` for t = -1.0, -0.9 .. 1.0."""


def sub_codes_param(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """Pack 6-bit scale and min codes ``(..., 8)`` each into the ``sub_codes`` parameter ``(..., 12)`` uint8."""
    both = torch.cat([sc, mn], dim=-1).to(torch.int32)
    return pack(both.reshape(-1), 6).reshape(*sc.shape[:-1], 12)


def sub_codes_of(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`sub_codes_param`: ``(sc, mn)``, int32 ``(..., 8)`` each."""
    both = unpack(param.reshape(-1), 6, param.numel() // 12 * 16).reshape(*param.shape[:-1], 16)
    return both[..., :N_SUB], both[..., N_SUB:]


def _pad(x: torch.Tensor) -> torch.Tensor:
    """Blocks ``(rows, n, g <= 256)`` -> ``(rows, n, 8, 32)``, zero-padded past ``g``."""
    rows, n, g = x.shape
    if g < SUPER:
        x = torch.cat([x, x.new_zeros(rows, n, SUPER - g)], dim=2)
    return x.reshape(rows, n, N_SUB, SUB)


def _search(x: torch.Tensor, w: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``(B, 8)`` (>= 0) and minus the minimum (>= 0) of each sub-block of ``x`` ``(B, 8, 32)``.

    ``w`` are the error weights (0 on padding), ``valid`` marks real values. As in llama.cpp, the candidates are
    tried in turn and each one's grid starts at the best minimum found so far, so the search walks the minimum too.
    """
    lo = torch.where(valid, x, torch.inf).amin(-1).clamp(max=0)  # (B, 8); 0 for an all-padding sub-block
    hi = torch.where(valid, x, -torch.inf).amax(-1).clamp(min=lo)
    live = hi > lo
    sw, sx = w.sum(-1), (w * x).sum(-1)

    def codes(inv: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return torch.round(inv.unsqueeze(-1) * (x - low.unsqueeze(-1))).clamp_(0, QMAX)

    def error(step: torch.Tensor, low: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (w * (step.unsqueeze(-1) * q + low.unsqueeze(-1) - x).square()).sum(-1)

    span = torch.where(live, hi - lo, 1.0)
    step, low = span / QMAX, lo  # candidate 0: plain min/max
    best = error(step, low, codes(QMAX / span, low))
    for t in SEARCH.tolist():
        inv = (QMAX + t) / torch.where(live, hi - low, 1.0)
        q = codes(inv, low)
        sl, sl2, sxl = (w * q).sum(-1), (w * q * q).sum(-1), (w * q * x).sum(-1)
        det = sw * sl2 - sl * sl
        ok = det > 0
        det = torch.where(ok, det, 1.0)
        this_step, this_low = (sw * sxl - sx * sl) / det, (sl2 * sx - sl * sxl) / det
        # Q4_K subtracts a non-negative minimum: a fitted minimum above 0 is pinned at 0 and the step refitted.
        pin = this_low > 0
        this_step = torch.where(pin, sxl / torch.where(sl2 > 0, sl2, 1.0), this_step)
        this_low = torch.where(pin, 0.0, this_low)
        err = error(this_step, this_low, q)
        better = ok & (err < best)
        best = torch.where(better, err, best)
        step, low = torch.where(better, this_step, step), torch.where(better, this_low, low)
    return torch.where(live, step, 0.0), torch.where(valid.any(-1), -low, 0.0)


class KQuantFormat(Format):
    """``q4_k``: 4-bit codes on per-sub-block grids ``d * sc_j * q - dmin * mn_j`` (see the module docstring)."""

    name = "q4_k"
    bits = 4
    summary = "llama.cpp Q4_K: 256-value super-blocks, 6-bit sub-block scales and minima (use q4_k:g256:sf16)"

    def _check(self, scheme: QScheme) -> None:
        if scheme.granularity != "group" or scheme.group_size != SUPER:
            raise UnsupportedError(
                f"{scheme}: q4_k codes super-blocks of {SUPER} values along each row, so its granularity is "
                f"g{SUPER}; use q4_k:g{SUPER}:sf16 (llama.cpp's Q4_K layout)."
            )

    def param_spec(self, scheme: QScheme) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        self._check(scheme)
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        return {"d": ((), dtype), "dmin": ((), dtype), "sub_codes": ((12,), torch.uint8)}

    def fit(self, x: torch.Tensor, scheme: QScheme, weight: torch.Tensor | None) -> Params:
        self._check(scheme)
        rows, n, g = x.shape
        if g > SUPER:  # only a caller that bypasses the grouping (an observer's single block) gets here
            raise UnsupportedError(f"q4_k fits blocks of at most {SUPER} values, got {g}; use q4_k:g{SUPER}.")
        xb = _pad(x.float()).reshape(-1, N_SUB, SUB)
        valid = _pad(torch.ones_like(x, dtype=torch.bool)).reshape(-1, N_SUB, SUB)
        if weight is None:  # llama.cpp's weights without an importance matrix
            n_valid = valid.sum(-1, keepdim=True).clamp(min=1)
            w = (xb.square().sum(-1, keepdim=True) / n_valid).sqrt() + xb.abs()
        else:
            w = _pad(weight.float()).reshape(-1, N_SUB, SUB)
        step, neg_min = _search(xb, w * valid, valid)  # (B, 8) each
        dtype = SCALE_DTYPES[scheme.scale_dtype]
        d = storage_param(step.amax(-1) / KMAX, dtype, "q4_k super-block scale d")
        dmin = storage_param(neg_min.amax(-1) / KMAX, dtype, "q4_k super-block minimum scale dmin")
        sc, mn = _codes6(step, d.float()), _codes6(neg_min, dmin.float())
        return {
            "d": d.reshape(rows, n),
            "dmin": dmin.reshape(rows, n),
            "sub_codes": sub_codes_param(sc, mn).reshape(rows, n, 12),
        }

    def _grids(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``d * sc_j`` and offset ``dmin * mn_j`` of each sub-block, fp32 ``(rows, n, 8, 1)``."""
        sc, mn = sub_codes_of(params["sub_codes"])
        step = params["d"].float().unsqueeze(-1) * sc.float()
        offset = params["dmin"].float().unsqueeze(-1) * mn.float()
        return step.unsqueeze(-1), offset.unsqueeze(-1)

    def _raw(self, x: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """Unclamped nearest codes ``(rows, n, 8, 32)`` of blocks ``x`` and whether each sub-block has a grid."""
        step, offset = self._grids(params)
        has_grid = step != 0
        raw = torch.round((_pad(x.float()) + offset) / torch.where(has_grid, step, 1.0))
        return torch.where(has_grid, raw, 0.0), has_grid

    def encode(
        self, x: torch.Tensor, params: Params, scheme: QScheme, generator: torch.Generator | None
    ) -> torch.Tensor:
        rows, n, g = x.shape
        raw, _ = self._raw(x, params)
        return raw.clamp_(0, QMAX).to(torch.int32).reshape(rows, n, SUPER)[..., :g]

    def decode(self, codes: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        rows, n, g = codes.shape
        step, offset = self._grids(params)
        # (d * sc) * q - dmin * mn, two separate fp32 roundings: ggml's (and gguf.quants') order.
        values = (step * _pad(codes.float())).sub_(offset)
        return values.reshape(rows, n, SUPER)[..., :g]

    def inside(self, x: torch.Tensor, params: Params, scheme: QScheme) -> torch.Tensor:
        # The straight-through rule of the integer grids, per sub-block: the unclamped code lies in 0..15.
        rows, n, g = x.shape
        raw, has_grid = self._raw(x, params)
        _, offset = self._grids(params)
        at_level = _pad(x.float()) == -offset  # a sub-block with step 0 has one level, -dmin * mn
        ok = torch.where(has_grid, (raw >= 0) & (raw <= QMAX), at_level)
        return ok.reshape(rows, n, SUPER)[..., :g]

    def clip_range(self, params: Params, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        """The lowest and highest level over the group's sub-blocks (each sub-block has its own grid)."""
        step, offset = self._grids(params)
        lo, hi = -offset, step * QMAX - offset  # (rows, n, 8, 1)
        return lo.amin(2), hi.amax(2)

    def levels(self, params: Params, scheme: QScheme) -> torch.Tensor:
        raise UnsupportedError("q4_k has one 16-level grid per 32-value sub-block, not one grid per group.")


def _codes6(value: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Nearest 6-bit multiples ``k`` (0..63) of ``base`` ``(B,)`` for ``value`` ``(B, 8)``, int32."""
    safe = torch.where(base > 0, base, 1.0).unsqueeze(-1)
    k = torch.round(value / safe).clamp_(0, KMAX)
    return torch.where(base.unsqueeze(-1) > 0, k, 0.0).to(torch.int32)


@register_family(r"q4_k", ("q4_k",), "llama.cpp Q4_K: double-quantized 4-bit super-blocks of 256 (q4_k:g256:sf16)")
def _kquant(match: re.Match[str]) -> Format:
    return KQuantFormat()
