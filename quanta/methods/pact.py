"""PACT (learned activation clipping) in the recipe grammar: ``w4a4-pact`` asks quantization-aware training to
learn each quantized input's clipping level (:mod:`quanta.qat.pact`); weights keep RTN's grid with the
straight-through estimator. A training method: post-training ``quanta.quantize`` refuses it before touching the
model, pointing to ``quanta.prepare_qat``."""

from __future__ import annotations

from quanta.methods.registry import Method, register_method
from quanta.methods.rtn import rtn_weight
from quanta.scheme import QScheme


def _ptq_refusal(_scheme: QScheme) -> str:
    return (
        "pact learns activation clipping during training: use quanta.prepare_qat(model, recipe), train, quanta.convert"
    )


register_method(
    Method(
        "pact",
        "rounding",
        "PACT: activation clipping levels learned in quantization-aware training (quanta.prepare_qat)",
        round=rtn_weight,
        check=_ptq_refusal,
    )
)
