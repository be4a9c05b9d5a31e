"""Post-training methods, one file each, registered by name (see :mod:`quanta.methods.registry`)."""

from quanta.methods.adaround import adaround_weight, layer_hessians
from quanta.methods.bias_correction import correct_bias
from quanta.methods.bn_fold import fold_batchnorm
from quanta.methods.cle import Equalized, equalize, find_pairs
from quanta.methods.layer_error import layer_output_errors
from quanta.methods.registry import Method, available_methods, get_method, parse_methods, register_method

__all__ = [
    "Equalized",
    "Method",
    "adaround_weight",
    "available_methods",
    "correct_bias",
    "equalize",
    "find_pairs",
    "fold_batchnorm",
    "get_method",
    "layer_hessians",
    "layer_output_errors",
    "parse_methods",
    "register_method",
]
