"""LSQ+ (learned step sizes and offsets) in the recipe grammar: ``w4a4-lsqplus`` asks quantization-aware training
to learn every step size and the zero points of asymmetric grids (:mod:`quanta.qat.lsq`). A training method:
post-training ``quanta.quantize`` refuses it before touching the model, pointing to ``quanta.prepare_qat``."""

from __future__ import annotations

from quanta.methods.registry import Method, register_method
from quanta.methods.rtn import rtn_weight
from quanta.scheme import QScheme


def _ptq_refusal(_scheme: QScheme) -> str:
    return (
        "lsqplus learns its steps and offsets during training: use quanta.prepare_qat(model, recipe), train, "
        "quanta.convert"
    )


register_method(
    Method(
        "lsqplus",
        "rounding",
        "LSQ+: step sizes and zero points learned in quantization-aware training (quanta.prepare_qat)",
        round=rtn_weight,
        check=_ptq_refusal,
    )
)
