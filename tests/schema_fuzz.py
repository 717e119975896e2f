"""Payload strategies derived from the published JSON Schemas, not from our code.

`valid_documents(kind)` draws documents that satisfy `schemas/<kind>.schema.json`
(hypothesis-jsonschema). `mutated_payloads(kind)` takes such a document and
replaces one of its leaves — any leaf, chosen by hypothesis — with a value
that real producers and broken tills do send: huge decimals as strings,
non-ASCII digits, lone surrogates, control characters, deep nesting, very
long strings, NaN/Infinity, braces, 5,000-digit numbers. Some of those are not
expressible as Python values that `json.dumps` accepts, so leaves can also be
raw JSON text spliced into the rendered payload.

Used by the unit tier (batch preparation, in seconds) and by the integration
tier (the same payloads through the real topics).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KINDS = ("click", "purchase", "store_receipt", "customer_attributes")
TOPIC_OF = {
    "click": "clicks",
    "purchase": "purchases",
    "store_receipt": "store-receipts",
    "customer_attributes": "customer-attributes",
}


@dataclass(frozen=True)
class Raw:
    """JSON text placed verbatim where a leaf was (NaN, 5,000 digits, …)."""

    text: str


DEEP = "[" * 5000 + "]" * 5000
ADVERSARIAL_VALUES: list[Any] = [
    "1E+999999999",
    "-1E+999999999",
    "1E-999999999",
    "9" * 5000,
    "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "\u0663\u0661",  # Arabic-Indic digits
    "\uff11\uff19\uff18\uff10",  # full-width digits
    "\ud800",  # lone surrogate: valid JSON, not valid Unicode
    "\udfff\ud800",
    "a\u0000b",
    "\x1b[31mred",
    "\u202eevil",  # right-to-left override
    "{hash-tag}",
    "}{",
    "x" * 100_000,
    "\x00" * 2000,
    "",
    "   ",
    "null",
    "NaN",
    "-0",
    0,
    -1,
    2**63,
    -(2**63) - 1,
    1e308,
    -1e-308,
    0.1 + 0.2,
    True,
    False,
    None,
    [],
    {},
    [None],
    {"$ref": "#"},
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("9" * 5000),
    Raw("1" + "0" * 400 + ".5"),
    Raw("1e999999"),
    Raw(DEEP),
    Raw('"\\ud800"'),
    Raw('"\\u0000"'),
]


@cache
def schema(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    return loaded


@cache
def valid_documents(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    # Built once per kind: building it per draw (inside flatmap) re-resolved
    # the schema every example and took most of the fuzz test's time.
    return from_schema(schema(kind))


def leaf_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every leaf (scalar, or empty container) of a JSON document, and every
    container itself (a whole `items` list or `attributes` object can be bad)."""
    paths: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths.extend(leaf_paths(value, (*path, key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            paths.extend(leaf_paths(value, (*path, index)))
    return paths


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: replaced(doc[head], rest, value)}
    copy = list(doc)
    copy[head] = replaced(doc[head], rest, value)
    return copy


def render(doc: Any) -> bytes:
    """JSON bytes, with Raw leaves spliced in verbatim."""
    raws: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**4000:
            raws.append(str(value))
            return f"@@RAW{len(raws) - 1}@@"
        return value

    text = json.dumps(mark(doc))
    for index, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{index}@@"', raw, 1)
    return text.encode("utf-8", "surrogatepass")


adversarial = st.sampled_from(ADVERSARIAL_VALUES) | st.text(max_size=40) | st.integers()


@st.composite
def mutated_payloads(draw: st.DrawFn, kind: str) -> bytes:
    """A schema-valid document with one leaf (or container) replaced."""
    doc = draw(valid_documents(kind))
    paths = leaf_paths(doc)
    path = draw(st.sampled_from(paths))
    return render(replaced(doc, path, draw(adversarial)))


def any_payload() -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, payload) for every kind: mutated, or valid as published."""
    return st.sampled_from(KINDS).flatmap(_payloads_of)


@cache
def _payloads_of(kind: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.tuples(st.just(kind), mutated_payloads(kind) | valid_documents(kind).map(render))


def schema_corpus(per_kind: int) -> dict[str, list[dict[str, Any]]]:
    """`per_kind` schema-valid documents of every kind, drawn once."""
    return {kind: _draw_documents(kind, per_kind) for kind in KINDS}


def _draw_documents(kind: str, count: int) -> list[dict[str, Any]]:
    from hypothesis import HealthCheck, given, settings

    found: list[dict[str, Any]] = []

    @settings(
        max_examples=count * 3,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(valid_documents(kind))
    def gather(doc: dict[str, Any]) -> None:
        if len(found) < count:
            found.append(doc)

    while len(found) < count:
        gather()
    return found


def mutate(doc: dict[str, Any], rng: random.Random, huge: bool = False) -> bytes:
    """One leaf (or container) of `doc` replaced by an adversarial value."""
    path = rng.choice(leaf_paths(doc))
    if huge and rng.random() < 0.5:
        value: Any = "\x01" * rng.randrange(100_000, 150_000)  # escapes to ~6x on the wire
    else:
        value = rng.choice(ADVERSARIAL_VALUES)
    return render(replaced(doc, path, value))
