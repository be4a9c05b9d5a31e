import pytest
from hypothesis import given
from hypothesis import strategies as st

from quanta import QScheme
from quanta.errors import BitWidthError, GroupSizeError, SchemeError, UnknownFormatError, UnsupportedError

EXAMPLES = [
    "int8",
    "uint8:tensor:asym",
    "int4:g128:asym",
    "int3:g16",
    "int8:ch:sf16",
    "q4.4",
    "binary",
    "ternary",
    "nf4:g64",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp4_e2m1:g32",
    "pot4",
    "lloyd3:g64",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_examples_are_canonical(text: str) -> None:
    assert str(QScheme.parse(text)) == text


def test_defaults_of_a_bare_format() -> None:
    s = QScheme.parse("int4")
    assert (s.granularity, s.group_size, s.mode, s.narrow, s.scale_dtype, s.rounding, s.observer) == (
        "tensor",
        None,
        "sym",
        False,
        "fp32",
        "rne",
        None,
    )


def test_options_in_any_order_and_defaults_dropped() -> None:
    s = QScheme.parse("int4:sf16:asym:g64")
    assert str(s) == "int4:g64:asym:sf16"
    assert str(QScheme.parse("int8:tensor")) == "int8"
    assert str(QScheme.parse("int8:ch:sym:full:sf32:rne")) == "int8:ch"
    assert QScheme.parse("uint8:asym") == QScheme.parse("uint8:tensor:asym")


@st.composite
def schemes(draw: st.DrawFn) -> QScheme:
    kind = draw(st.sampled_from(["int", "uint", "nf4", "fp8_e4m3", "fp4_e2m1", "binary", "lloyd", "q", "pot"]))
    observer = draw(st.sampled_from([None, "minmax", "ema", "pct99.9"]))
    scale_dtype = draw(st.sampled_from(["fp32", "fp16", "bf16"]))
    if kind == "q":
        return QScheme(f"q{draw(st.integers(1, 8))}.{draw(st.integers(0, 8))}", observer=observer)
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    group_size = draw(st.integers(1, 4096)) if granularity == "group" else None
    common = {"granularity": granularity, "group_size": group_size, "scale_dtype": scale_dtype, "observer": observer}
    if kind in ("int", "uint"):
        return QScheme(
            f"{kind}{draw(st.integers(2, 16))}",
            mode=draw(st.sampled_from(["sym", "asym", "fmin"])),
            narrow=draw(st.booleans()),
            rounding=draw(st.sampled_from(["rne", "sr"])),
            **common,
        )
    if kind == "lloyd":
        return QScheme(f"lloyd{draw(st.integers(1, 8))}", **common)
    if kind == "pot":
        return QScheme(f"pot{draw(st.integers(2, 8))}", **common)
    return QScheme(kind, **common)


@given(schemes())
def test_string_form_round_trips(scheme: QScheme) -> None:
    assert QScheme.parse(str(scheme)) == scheme
    assert str(QScheme.parse(str(scheme))) == str(scheme)


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("int17", BitWidthError, "1 to 16"),
        ("int0", BitWidthError, "1 to 16"),
        ("uint99:ch", BitWidthError, "1 to 16"),
        ("pot12", BitWidthError, "2 to 8"),
        ("lloyd9", BitWidthError, "1 to 8"),
        ("q0.4", BitWidthError, "sign"),
        ("q9.9", BitWidthError, "1..16"),
        ("int4:g0", GroupSizeError, "positive"),
        ("int4:g-8", GroupSizeError, "positive"),
        ("float3", UnknownFormatError, "Valid formats"),
        ("int4:g32:bogus", SchemeError, "tensor | ch | gN"),
        ("int4:g32:ch", SchemeError, "twice"),
        ("binary:asym", UnsupportedError, "supports sym"),
        ("q4.4:ch", UnsupportedError, "per-tensor only"),
        ("nf4:narrow", UnsupportedError, "narrow"),
        ("pot4:sr", UnsupportedError, "rounding"),
        ("int1:narrow", BitWidthError, "single level"),
        ("", SchemeError, "FORMAT"),
    ],
)
def test_bad_strings_raise_named_errors_that_say_what_to_do(text: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        QScheme.parse(text)


def test_unknown_format_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownFormatError) as info:
        QScheme.parse("int4x")
    for name in ("int8", "nf4", "fp8_e4m3", "q4.4", "binary", "ternary", "pot4", "lloyd3"):
        assert name in str(info.value)


def test_dataclass_validation_matches_parse() -> None:
    with pytest.raises(SchemeError, match="needs a group_size"):
        QScheme("int4", "group")
    with pytest.raises(SchemeError, match="only goes with"):
        QScheme("int4", "channel", 32)
    assert QScheme.parse("int4:g32").replace(mode="asym") == QScheme.parse("int4:g32:asym")


def test_format_names_are_canonicalised() -> None:
    assert QScheme.parse("INT04:G32") == QScheme.parse("int4:g32")
    assert str(QScheme.parse("int04")) == "int4"
    assert QScheme("Q04.4").format == "q4.4"
    assert QScheme("LLOYD03", "channel").format == "lloyd3"
