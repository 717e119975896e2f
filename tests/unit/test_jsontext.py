"""The hot path's JSON (orjson) reads and writes exactly what the standard
library did: the same documents, the same types, the same refusals.

Differential: every input goes through jsontext and through the standard
library's decoder as validate.py used it before; any difference fails."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patronage.models import jsontext
from tests.schema_fuzz import any_payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


STANDARD = json.JSONDecoder(parse_constant=_no_constant)


def canonical(value: Any) -> Any:
    """A form in which 1 != 1.0 != True and -0.0 != 0.0 (== alone says equal)."""
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", [canonical(v) for v in value])
    return ("dict", [(k, canonical(v)) for k, v in value.items()])


def outcome(decode: Any, text: str) -> Any:
    try:
        return canonical(decode(text))
    except (ValueError, RecursionError) as exc:
        return ("refused", type(exc).__name__, str(exc))


def assert_same(text: str) -> None:
    ours = outcome(lambda t: jsontext.loads(t.encode()), text)
    assert ours == outcome(STANDARD.decode, text), text[:200]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',  # duplicate keys: the last wins in both
        "-0",
        "-0.0",
        "1E2",
        "1e400",  # a double's overflow: the standard library reads inf
        "-1e400",
        "0.1e-400",
        "1.7976931348623157e309",
        '"\\ud800"',  # a lone surrogate escape
        '"\\ud83d\\ude00"',
        '"\\u0000"',
        str(2**63 - 1),
        str(2**63),
        str(2**64 - 1),
        str(2**64),  # orjson alone would read a float
        str(-(2**63)),
        str(-(2**63) - 1),  # 19 digits, already a float to orjson
        "9" * 30,
        '{"q": 123456789012345678901234567890.5}',
        "NaN",
        "-Infinity",
        '{"ts": NaN}',
        "[" * 999 + "]" * 999,  # orjson accepts what the recursion limit may refuse
        "[" * 1100 + "]" * 1100,
        "[" * 100 + "]" * 100,
        " {} ",
        "\x0c{}",
        "{} x",
        '{"a": "\x01"}',  # a raw control character in a string
        '{"price": "12,99 \u20ac", "label": "K\u00fcche & Bad"}',
        "",
        "[1,]",
        "{'a': 1}",
    ],
)
def test_edge_cases_read_alike(text: str) -> None:
    assert_same(text)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(any_payload())
def test_published_schema_payloads_read_alike(kind_and_payload: tuple[str, bytes]) -> None:
    """Mutated and valid payloads derived from the published schemas."""
    _, payload = kind_and_payload
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return  # refused (not_utf8) before any JSON is read
    if text.startswith("\ufeff"):
        return  # refused (a byte-order mark) before any JSON is read
    assert_same(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(json_values, st.booleans())
def test_generated_documents_read_alike(value: Any, ascii_only: bool) -> None:
    assert_same(json.dumps(value, ensure_ascii=ascii_only))


def delta_wire_values() -> st.SearchStrategy[Any]:
    """Shaped like the JSON the worker writes: ids, hex tokens, ms times, money, labels."""
    money = st.floats(min_value=-1e9, max_value=1e12, allow_nan=False, allow_infinity=False)
    label = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
    return st.lists(
        st.fixed_dictionaries(
            {
                "src": st.text(max_size=20),
                "off": st.integers(min_value=0, max_value=2**70),
                "eid": st.text("0123456789abcdef", min_size=16, max_size=16),
                "t": st.integers(min_value=0, max_value=2**53),
                "b": money,
                "cats": st.lists(st.tuples(label, money).map(list), max_size=3),
                "at": st.lists(st.tuples(label, st.text()).map(list), max_size=2),
            }
        ),
        max_size=4,
    )


@settings(max_examples=400, deadline=None)
@given(delta_wire_values())
def test_apply_arguments_read_back_alike(deltas: Any) -> None:
    """What the apply script decodes is what the standard library's text says
    (cjson and json read the same numbers from either spelling)."""
    ours = json.loads(jsontext.dumps_compact(deltas))
    theirs = json.loads(json.dumps(deltas, separators=(",", ":")))
    assert canonical(ours) == canonical(theirs)


def test_dumps_compact_keeps_integers_beyond_64_bits() -> None:
    assert json.loads(jsontext.dumps_compact({"off": 2**70})) == {"off": 2**70}
    assert jsontext.dumps_compact({"x": "K\u00fcche"}) == '{"x":"K\u00fcche"}'.encode()
    assert math.isinf(jsontext.loads(b"1e400"))


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.text(),  # lone surrogates, controls, quotes, backslashes, any script
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),  # NaN and infinities too: the standard library writes them
        st.booleans(),
        st.none(),
    )
)
def test_scalars_are_written_as_the_standard_library_writes_them(value: Any) -> None:
    """Stored attribute values keep the spelling they always had."""
    assert jsontext.dumps_text(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    )
