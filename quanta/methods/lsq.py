"""LSQ (learned step size quantization) in the recipe grammar: ``w4a4-lsq`` asks quantization-aware training to
learn every step size (:mod:`quanta.qat.quantizers`). It is a training method: post-training ``quanta.quantize``
refuses it before touching the model, pointing to ``quanta.prepare_qat``."""

from __future__ import annotations

from quanta.methods.registry import Method, register_method
from quanta.methods.rtn import rtn_weight
from quanta.scheme import QScheme


def _ptq_refusal(_scheme: QScheme) -> str:
    return "lsq learns its step sizes during training: use quanta.prepare_qat(model, recipe), train, quanta.convert"


register_method(
    Method(
        "lsq",
        "rounding",
        "LSQ: step sizes learned in quantization-aware training (quanta.prepare_qat; not a post-training method)",
        round=rtn_weight,
        check=_ptq_refusal,
    )
)
