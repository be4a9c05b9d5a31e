"""Pure tensor math, no modules: ranges and scales, rounding, affine codes, minifloats, Lloyd-Max, packing, metrics."""

from quanta.primitives.affine import (
    affine_qparams,
    dequantize_affine,
    float_offset_qparams,
    int_range,
    quantize_affine,
    symmetric_scale,
)
from quanta.primitives.groups import Grouping, from_2d, to_2d
from quanta.primitives.lloyd import lloyd_max, nearest_level
from quanta.primitives.metrics import cosine_similarity, max_abs_error, mse, sqnr_db
from quanta.primitives.minifloat import MiniFloat
from quanta.primitives.packing import pack, packed_nbytes, unpack
from quanta.primitives.rounding import round_values, stochastic_round
from quanta.primitives.ste import fake_quantize_affine, straight_through

__all__ = [
    "Grouping",
    "MiniFloat",
    "affine_qparams",
    "cosine_similarity",
    "dequantize_affine",
    "fake_quantize_affine",
    "float_offset_qparams",
    "from_2d",
    "int_range",
    "lloyd_max",
    "max_abs_error",
    "mse",
    "nearest_level",
    "pack",
    "packed_nbytes",
    "quantize_affine",
    "round_values",
    "sqnr_db",
    "stochastic_round",
    "straight_through",
    "symmetric_scale",
    "to_2d",
    "unpack",
]
