"""Validation and correction decisions, as a table of payload -> outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from patronage.models.contracts import Purchase, parse_ts
from patronage.models.validate import Accepted, Rejected, Rules, validate

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RULES = Rules(currencies={"EUR": 1.0, "USD": 0.9})


def purchase(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "e1",
        "customer_id": "c1",
        "ts": "2025-12-31T10:00:00+01:00",
        "order_id": "o1",
        "items": [{"sku": "a", "category": "food", "quantity": 2, "unit_price": 1.5}],
        "total": 3.0,
        "currency": "EUR",
    }
    body.update(overrides)
    return body


def run(body: Any, kind: str = "purchase") -> Accepted | Rejected:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return validate(raw, kind, NOW, RULES)  # type: ignore[arg-type]


REJECTIONS = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b"\xff\xfe", "not_utf8"),
    (b'{"event_id": "e", "customer_id": "c", "ts": NaN}', "invalid_json"),
    (purchase(customer_id=""), "schema"),
    (purchase(customer_id="   "), "schema"),
    (purchase(event_id=None), "schema"),
    ({k: v for k, v in purchase().items() if k != "customer_id"}, "schema"),
    (purchase(currency="XYZ"), "unknown_currency"),
    (purchase(currency="E1R"), "schema"),
    (purchase(ts="2026-01-01T01:00:00Z"), "future_timestamp"),
    (purchase(ts="1999-12-31T23:00:00Z"), "ancient_timestamp"),
    (purchase(ts="yesterday"), "bad_timestamp"),
    (purchase(ts=True), "schema"),
    (purchase(items=[]), "empty_basket"),
    (purchase(items=[{"sku": "a", "quantity": 0, "unit_price": 1}]), "empty_basket"),
    (purchase(items=[{"sku": "a", "quantity": 5000, "unit_price": 1}]), "absurd_quantity"),
    (purchase(items=[{"sku": "a", "quantity": 1, "unit_price": -1}]), "negative_price"),
    (purchase(items=[{"sku": "a", "quantity": 1, "unit_price": 1e9}]), "absurd_price"),
    (purchase(items=[{"sku": "a", "quantity": 1.5, "unit_price": 1}]), "schema"),
    (purchase(items=[{"sku": "a", "quantity": 1, "unit_price": 1}] * 501), "too_many_items"),
    (purchase(padding="x" * 70_000), "payload_too_large"),
    (
        {"event_id": "e", "customer_id": "c", "ts": 1, "attributes": {"shoe": 1}},
        "no_known_attributes",
    ),
]


@pytest.mark.parametrize(("body", "code"), REJECTIONS)
def test_rejections_name_a_reason(body: Any, code: str) -> None:
    kind = "customer_attributes" if isinstance(body, dict) and "attributes" in body else "purchase"
    if kind == "customer_attributes":
        body = {**body, "ts": NOW - 1000}
    outcome = run(body, kind)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.code == code
    assert outcome.reason  # a person can read why


CORRECTIONS = [
    (purchase(total=99.0), "total_mismatch", 3.0),
    (purchase(total=3.004), None, 3.0),
    (
        purchase(
            items=[
                {"sku": "a", "category": "food", "quantity": 2, "unit_price": 1.5},
                {"sku": "b", "category": "food", "quantity": 0, "unit_price": 9},
            ]
        ),
        "zero_quantity_line_dropped",
        3.0,
    ),
    (purchase(items=[{"sku": "a", "quantity": 2, "unit_price": 1.5}]), "missing_category", 3.0),
    (purchase(currency=" eur "), None, 3.0),
]


@pytest.mark.parametrize(("body", "correction", "total"), CORRECTIONS)
def test_corrections_keep_the_event(
    body: dict[str, Any], correction: str | None, total: float
) -> None:
    outcome = run(body)
    assert isinstance(outcome, Accepted), outcome
    assert isinstance(outcome.event, Purchase)
    assert float(outcome.event.total) == total
    assert outcome.corrections == ((correction,) if correction else ())


def test_return_line_is_accepted() -> None:
    body = purchase(
        items=[
            {"sku": "a", "category": "food", "quantity": 2, "unit_price": 1.5},
            {"sku": "b", "category": "toys", "quantity": -1, "unit_price": 1.0},
        ],
        total=2.0,
    )
    outcome = run(body)
    assert isinstance(outcome, Accepted)
    assert outcome.corrections == ()


def test_ids_are_stripped_and_extra_fields_ignored() -> None:
    outcome = run(purchase(customer_id="  c9 ", type="purchase", something_new=1))
    assert isinstance(outcome, Accepted)
    assert outcome.event.customer_id == "c9"


def test_attribute_corrections() -> None:
    body = {
        "event_id": "a1",
        "customer_id": "c1",
        "ts": NOW - 1000,
        "attributes": {
            "birth_year": "1980",
            "gender": "f",
            "children": 99,
            "shoe_size": 42,
            "consent_email": "yes",
        },
    }
    outcome = run(body, "customer_attributes")
    assert isinstance(outcome, Accepted)
    assert outcome.event.attributes == {"birth_year": 1980, "gender": "f"}  # type: ignore[union-attr]
    assert sorted(outcome.corrections) == [
        "attribute_coerced",
        "attribute_range_dropped",
        "attribute_type_dropped",
        "unknown_attribute_dropped",
    ]


TIMESTAMPS = [
    ("2026-01-01T00:00:00Z", NOW),
    ("2026-01-01T01:00:00+01:00", NOW),
    ("2026-01-01T00:00:00", NOW),  # naive: default zone (UTC)
    (NOW, NOW),
    (str(NOW), NOW),
    (float(NOW), NOW),
]


@pytest.mark.parametrize(("value", "expected"), TIMESTAMPS)
def test_parse_ts(value: Any, expected: int) -> None:
    assert parse_ts(value) == expected
