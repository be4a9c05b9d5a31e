import pytest
import torch
from torch import nn

from quanta.errors import QuantaError, UnsupportedError
from quanta.methods import available_methods, parse_methods
from quanta.methods.pipeline import MethodPlan, Target
from quanta.scheme import QScheme


def test_every_method_is_registered_and_combinations_order_by_stage() -> None:
    assert {"rtn", "cle", "bc", "adaround"} <= set(available_methods())
    assert [m.name for m in parse_methods("bc_adaround_cle").all] == ["cle", "adaround", "bc"]
    assert parse_methods("cle").rounding.name == "rtn"


@pytest.mark.parametrize(
    ("text", "match"), [("gptqq", "available"), ("rtn_adaround", "one rounding"), ("bc_bc", "twice")]
)
def test_bad_method_fields_are_refused(text: str, match: str) -> None:
    with pytest.raises(UnsupportedError, match=match):
        parse_methods(text)


def test_plan_checks_data_and_schemes_before_anything_runs() -> None:
    layer = nn.Linear(8, 4)
    with pytest.raises(QuantaError, match="calib"):
        MethodPlan([Target("0", layer, "adaround", QScheme.parse("int4:g32"))], calib=None)
    with pytest.raises(UnsupportedError, match="integer"):
        MethodPlan([Target("0", layer, "adaround", QScheme.parse("nf4:g32"))], calib=[torch.randn(2, 8)])


def test_plan_runs_transform_rounding_and_correction_in_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    calib = (torch.randn(32, 8) for _ in range(2))  # a generator: the plan reads it once
    scheme = QScheme.parse("int4:ch")
    plan = MethodPlan([Target(n, model.get_submodule(n), "cle_adaround_bc", scheme) for n in ("0", "2")], calib)
    x = torch.randn(4, 8)
    expected = model(x)
    plan.before(model)  # CLE keeps the float function
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    qt = plan.quantize_weight("0", model[0], scheme)
    assert qt.shape == model[0].weight.shape and str(qt.scheme) == "int4:ch"
