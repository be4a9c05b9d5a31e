"""quanta: quantization for neural networks, signals and data, measured honestly.

The tensor-level API::

    import quanta
    qt = quanta.quantize_tensor(weight, "int4:g128:asym")   # packed codes + scales
    w_hat = quanta.dequantize(qt)
    print(qt.nbytes, quanta.metrics.sqnr_db(weight, w_hat))
"""

from quanta import errors, signal, vq
from quanta._version import __version__
from quanta.api import model_nbytes, quantize
from quanta.checkpoint import load, save
from quanta.codec import dequantize, fake_quantize, quantize_tensor
from quanta.eval.sensitivity import sensitivity
from quanta.export import export
from quanta.formats import get_format
from quanta.primitives import metrics
from quanta.qat import convert, prepare_qat
from quanta.recipe import Recipe, Rule, preset
from quanta.scheme import QScheme
from quanta.tensor import QTensor

__all__ = [
    "QScheme",
    "QTensor",
    "Recipe",
    "Rule",
    "__version__",
    "convert",
    "dequantize",
    "errors",
    "export",
    "fake_quantize",
    "get_format",
    "load",
    "metrics",
    "model_nbytes",
    "prepare_qat",
    "preset",
    "quantize",
    "quantize_tensor",
    "save",
    "sensitivity",
    "signal",
    "vq",
]
