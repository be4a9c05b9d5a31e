import pytest
from torch import nn

from quanta.errors import CorruptDataError, SchemeError
from quanta.recipe import SPECIAL_PRESETS, Recipe, Rule, preset, resolve_recipe
from quanta.scheme import QScheme


@pytest.mark.parametrize(
    ("name", "weight", "activation", "dynamic", "method"),
    [
        ("w8a16", "int8:ch", None, False, "rtn"),
        ("w8a8", "int8:ch", "int8:tensor:asym", False, "rtn"),
        ("w8a8-dyn", "int8:ch", "int8", True, "rtn"),
        ("w4a16-g128", "int4:g128:asym:sbf16", None, False, "rtn"),  # groups >= 128: bf16 scales (int4 kernel)
        ("w4a16-g256", "int4:g256:asym:sbf16", None, False, "rtn"),
        ("w8a16-g128", "int8:g128:asym:sbf16", None, False, "rtn"),
        ("w4a16-g64", "int4:g64:asym:sf16", None, False, "rtn"),  # smaller groups keep fp16's finer scales
        ("w4a16-g32-adaround", "int4:g32:asym:sf16", None, False, "adaround"),
        ("w3a16-g16", "int3:g16:asym:sf16", None, False, "rtn"),
        ("w2a16-g16", "int2:g16:asym:sf16", None, False, "rtn"),
        ("w4a16", "int4:ch:asym", None, False, "rtn"),
        ("nf4-g64", "nf4:g64:sf16", None, False, "rtn"),
        ("fp8", "fp8_e4m3:ch", "fp8_e4m3", False, "rtn"),
        ("bnn", "binary:ch", "binary:tensor:fmin", False, "rtn"),
    ],
)
def test_preset_grammar(name: str, weight: str, activation: str | None, dynamic: bool, method: str) -> None:
    main = preset(name).rules[-1]
    assert str(main.weight) == weight
    assert (None if main.activation is None else str(main.activation)) == activation
    assert main.dynamic == dynamic and main.method == method


def test_presets_keep_embeddings_and_heads_in_float() -> None:
    recipe = preset("w4a16-g128")
    assert recipe.rule_for("model.embed_tokens", nn.Embedding(10, 4)).skip  # type: ignore[union-attr]
    assert recipe.rule_for("lm_head", nn.Linear(4, 10)).skip  # type: ignore[union-attr]
    assert not recipe.rule_for("layers.0.q_proj", nn.Linear(4, 4)).skip  # type: ignore[union-attr]
    assert preset("ternary").keep_first_last and not preset("w8a16").keep_first_last
    assert preset("w4a16+kv8").kv_bits == 8


@pytest.mark.parametrize("name", ["w8a16", "w4a16-g32", "w8a8-dyn", *SPECIAL_PRESETS])
def test_json_round_trip(name: str, tmp_path: object) -> None:
    recipe = preset(name)
    assert Recipe.from_json(recipe.to_json()) == recipe
    path = f"{tmp_path}/r.json"
    with open(path, "w") as f:
        f.write(recipe.to_json())
    assert resolve_recipe(path) == recipe


@pytest.mark.parametrize("name", ["w9", "int4", "w4a16-g0x", "w17a16", "w8a16-dyn", "w4a16-g"])
def test_unknown_presets_explain_the_grammar(name: str) -> None:
    with pytest.raises(SchemeError, match=r"w\{W\}a\{A\}|1\.\.16|needs A < 16|positive"):
        preset(name)


def test_bad_recipe_json() -> None:
    with pytest.raises(CorruptDataError, match="JSON"):
        Recipe.from_json("{oops")
    with pytest.raises(CorruptDataError, match="recipe_version"):
        Recipe.from_json('{"rules": []}')
    with pytest.raises(CorruptDataError, match="newer"):
        Recipe.from_json('{"recipe_version": 99, "rules": []}')
    with pytest.raises(SchemeError, match="unknown fields"):
        Recipe.from_json('{"recipe_version": 1, "rules": [{"pattern": "*", "eval": "os.system"}]}')


def test_first_matching_rule_wins() -> None:
    recipe = Recipe(
        rules=(
            Rule(pattern="head", skip=True),
            Rule(module_type="Linear", weight=QScheme.parse("int4:g32")),
            Rule(weight=QScheme.parse("int8:ch")),
        )
    )
    assert recipe.rule_for("head", nn.Linear(2, 2)).skip  # type: ignore[union-attr]
    assert str(recipe.rule_for("body", nn.Linear(2, 2)).weight) == "int4:g32"  # type: ignore[union-attr]
    assert str(recipe.rule_for("conv", nn.Conv2d(1, 1, 3)).weight) == "int8:ch"  # type: ignore[union-attr]
