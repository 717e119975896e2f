"""Validation and correction decisions, as a table of payload -> outcome."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from patronage.models import jsontext
from patronage.models import validate as validate_module
from patronage.models.batch import sent_click_delta, sent_order_delta
from patronage.models.contracts import UTC, Click, Item, Purchase, parse_ts, routing_key
from patronage.models.profile import to_delta
from patronage.models.simulate import generate
from patronage.models.validate import Accepted, Rejected, Rules, validate
from tests.public_data import grocery_receipts
from tests.schema_fuzz import ADVERSARIAL_VALUES, leaf_paths, render, replaced, valid_documents

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
    (b'{"event_id": "e", "customer_id": "c", "ts": -Infinity}', "invalid_json"),
    # A byte-order mark is valid UTF-8 but not JSON (json.loads says so first).
    ("\ufeff".encode() + json.dumps(purchase()).encode(), "invalid_json"),
    (purchase(customer_id=""), "schema"),
    (purchase(customer_id="   "), "schema"),
    (purchase(event_id=None), "schema"),
    ({k: v for k, v in purchase().items() if k != "customer_id"}, "schema"),
    (purchase(currency="XYZ"), "unknown_currency"),
    (purchase(currency="E1R"), "schema"),
    (purchase(ts="2026-01-01T01:00:00Z"), "future_timestamp"),
    (purchase(ts="1989-12-31T23:00:00Z"), "ancient_timestamp"),
    (purchase(ts="yesterday"), "bad_timestamp"),
    (purchase(ts=True), "schema"),
    (purchase(items=[]), "empty_basket"),
    (purchase(items=[{"sku": "a", "quantity": 0, "unit_price": 1}]), "empty_basket"),
    # A receipt whose every line is unusable has nothing left to count.
    (purchase(items=[{"sku": "a", "quantity": 5000, "unit_price": 1}]), "no_usable_lines"),
    (purchase(items=[{"sku": "a", "quantity": 1, "unit_price": -1}]), "no_usable_lines"),
    (purchase(items=[{"sku": "a", "quantity": 1, "unit_price": 1e9}]), "no_usable_lines"),
    (purchase(items="3 apples"), "schema"),
    (purchase(customer_id="\ud800"), "schema"),  # valid JSON, not valid Unicode
    (purchase(customer_id="{c1}"), "schema"),  # would split the Redis hash tag
    (purchase(customer_id="c" * 129), "schema"),
    (purchase(customer_id="c\u0000"), "schema"),
    (purchase(event_id="e\u001b[31m"), "schema"),
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


@pytest.mark.parametrize(
    ("customer_id", "accepted"),
    [(" " + "c" * 128 + " ", True), ("c" * 128, True), (" " + "c" * 129, False), ("  ", False)],
)
def test_id_length_limits_apply_to_the_stripped_id(customer_id: str, accepted: bool) -> None:
    outcome = run(purchase(customer_id=customer_id))
    assert isinstance(outcome, Accepted) is accepted, outcome
    if isinstance(outcome, Rejected):
        assert "customer_id: String should have at" in outcome.reason


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


LINE_DROPS = [
    # (bad line, code): the good line beside it still counts.
    (
        {"sku": "fuel", "category": "KIOSK-GAS", "quantity": 4349, "unit_price": 0},
        "absurd_quantity",
    ),
    ({"sku": "b", "quantity": 1, "unit_price": -1}, "negative_price"),
    ({"sku": "b", "quantity": 1, "unit_price": 1e9}, "absurd_price"),
    ({"quantity": 1, "unit_price": 1}, "line_schema"),
    ({"sku": "\ud800", "quantity": 1, "unit_price": 1}, "line_schema"),
    ({"sku": "b", "quantity": "abc", "unit_price": 1}, "line_quantity"),
    ({"sku": "b", "quantity": "1E+999999999", "unit_price": 1}, "line_quantity"),
    ({"sku": "b", "quantity": 1, "unit_price": "NaN"}, "line_price"),
    ({"sku": "b", "quantity": True, "unit_price": 1}, "line_quantity"),
    ("3 x milk", "line_not_an_object"),
    ([1, 2], "line_not_an_object"),
]


@pytest.mark.parametrize(("line", "code"), LINE_DROPS)
def test_a_bad_line_is_dropped_and_the_receipt_kept(line: Any, code: str) -> None:
    good = {"sku": "a", "category": "dairy", "quantity": 2, "unit_price": 1.25}
    outcome = run(purchase(items=[good, line], total=2.5))
    assert isinstance(outcome, Accepted), outcome
    assert isinstance(outcome.event, Purchase)
    assert outcome.event.total == Decimal("2.5")
    assert [i.sku for i in outcome.event.items] == ["a"]
    assert [(p.index, p.code) for p in outcome.dropped_lines] == [(1, code)]
    assert outcome.dropped_lines[0].reason


def test_weighed_goods_keep_their_decimal_quantity() -> None:
    line = {"sku": "bananas", "category": "fruit", "quantity": 0.532, "unit_price": 2.19}
    outcome = run(purchase(items=[line], total=1.17))
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event.items[0].quantity == Decimal("0.532")  # type: ignore[union-attr]
    assert outcome.event.total == Decimal("1.16508")  # type: ignore[union-attr]
    assert outcome.corrections == ()


LABELS = [
    # (field, value sent, value kept, correction)
    ("channel", "web", "other", "unknown_channel"),
    ("channel", " Email ", "email", None),
    ("channel", 7, "other", "unknown_channel"),
    ("payment_method", 12, "12", "payment_method_coerced"),
    ("payment_method", "\ud800", None, "payment_method_dropped"),
    ("payment_method", "card\u0007", None, "payment_method_dropped"),
    ("payment_method", {"type": "card"}, None, "payment_method_dropped"),
    ("payment_method", "x" * 300, "x" * 128, "payment_method_truncated"),
]


@pytest.mark.parametrize(("name", "sent", "kept", "correction"), LABELS)
def test_an_unusable_optional_label_is_corrected_not_fatal(
    name: str, sent: Any, kept: Any, correction: str | None
) -> None:
    outcome = run(purchase(**{name: sent}))
    assert isinstance(outcome, Accepted), outcome
    assert getattr(outcome.event, name) == kept
    assert outcome.corrections == ((correction,) if correction else ())


def test_an_unknown_page_type_is_other() -> None:
    click = {
        "event_id": "e",
        "customer_id": "c",
        "ts": NOW - 1000,
        "session_id": "s",
        "page_type": "store-locator",
        "device": "\ud83d",
    }
    outcome = run(click, "click")
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event.page_type == "other"  # type: ignore[union-attr]
    assert outcome.event.device is None  # type: ignore[union-attr]
    assert sorted(outcome.corrections) == ["device_dropped", "unknown_page_type"]


@pytest.mark.parametrize("total", ["1E+999999999", "abc", None, [3], 1e308])
def test_an_unusable_total_is_recomputed_from_the_lines(total: Any) -> None:
    outcome = run(purchase(total=total))
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event.total == Decimal("3")  # type: ignore[union-attr]
    assert outcome.corrections in (("total_unusable",), ("total_mismatch",))


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "19\u00b280", "1e3", "--1", 1980.5])
def test_attribute_numbers_must_be_plain_digits(value: Any) -> None:
    body = {
        "event_id": "a1",
        "customer_id": "c1",
        "ts": NOW - 1000,
        "attributes": {"birth_year": value, "children": value, "gender": "f"},
    }
    outcome = run(body, "customer_attributes")
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event.attributes == {"gender": "f"}  # type: ignore[union-attr]


def receipt(**overrides: Any) -> dict[str, Any]:
    body = purchase(receipt_id="r1", store_id="berlin-mitte", payment_method="card")
    del body["order_id"]
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


# Whose profile an event builds (issue #16): the customer's; without one, the
# cookie's; a till receipt without either, its loyalty card's.
PROFILE_IDS = [
    (purchase(), "purchase", "c1"),
    (
        purchase(customer_id=None, anonymous_id="0b7f5c2e-3d41"),
        "purchase",
        "anonymous_id:0b7f5c2e-3d41",
    ),
    (purchase(anonymous_id="0b7f5c2e-3d41"), "purchase", "c1"),
    (
        receipt(customer_id=None, loyalty_card="4006381333931"),
        "store_receipt",
        "loyalty_card:4006381333931",
    ),
    (receipt(loyalty_card="4006381333931"), "store_receipt", "c1"),
    (
        receipt(customer_id=None, anonymous_id="a1", loyalty_card="4006381333931"),
        "store_receipt",
        "anonymous_id:a1",
    ),
]


@pytest.mark.parametrize(("body", "kind", "profile_id"), PROFILE_IDS)
def test_profile_id_of_an_event(body: dict[str, Any], kind: str, profile_id: str) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    outcome = run(body, kind)
    assert isinstance(outcome, Accepted), outcome
    assert outcome.event.profile_id == profile_id
    # The publisher keys the event the same way (two implementations of one rule).
    assert routing_key(body) == profile_id


UNIDENTIFIED = [
    (purchase(customer_id=None), "purchase", "customer_id or anonymous_id is required"),
    (receipt(customer_id=None, loyalty_card="{guest}"), "store_receipt", "must not contain { or }"),
    (purchase(customer_id="anonymous_id:x"), "purchase", "an identifier's key"),
    (purchase(customer_id="loyalty_card:123"), "purchase", "an identifier's key"),
]


@pytest.mark.parametrize(("body", "kind", "why"), UNIDENTIFIED)
def test_events_without_a_usable_identifier_are_rejected(
    body: dict[str, Any], kind: str, why: str
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    outcome = run(body, kind)
    assert isinstance(outcome, Rejected) and outcome.code == "schema", outcome
    assert why in outcome.reason


# A line's values as shops and tills send them, and as broken producers do:
# padded, empty, over-long, control characters, lone surrogates, numbers as
# text, booleans, nulls.
_line_text = st.one_of(
    st.sampled_from(["sku-4854", " 4006381333931 ", "", "   ", "Milch 3,5%", "x" * 129, "a\x00b"]),
    st.text(max_size=140),
)
_line_number = st.one_of(
    st.integers(-2000, 2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["0.532", " 2.19 ", "1e3", "NaN", "-0", "1E+999999999"]),
    st.booleans(),
    st.none(),
)
_line = st.fixed_dictionaries(
    {},
    optional={
        "sku": st.one_of(_line_text, st.integers(), st.none()),
        "category": st.one_of(_line_text, st.none()),
        "quantity": _line_number,
        "unit_price": _line_number,
        "vat_rate": st.floats(0, 0.25),
    },
)


def _line_outcome(check: Any, line: dict[str, Any]) -> Any:
    corrections: list[str] = []
    try:
        item = check(line, 0, Rules(), corrections)
    except validate_module._Reject as rej:
        return ("dropped", rej.code, corrections)
    if item is None:
        return (None, corrections)
    return (item, item.model_dump(), item.model_fields_set, corrections)


def _validated_line(line: Any, index: int, rules: Rules, corrections: list[str]) -> Any:
    """The line check with every line through Item's own validation."""
    sku = line.get("sku")
    if isinstance(sku, str):
        line = {**line, "sku": f" {sku}"}
    return validate_module._check_line(line, index, rules, corrections)


@given(_line)
@settings(max_examples=400, deadline=None)
def test_a_line_built_without_validation_is_the_validated_line(line: dict[str, Any]) -> None:
    """Plain lines skip Item's validation (`_line_item`); a padded sku takes
    it. The two must keep, drop and correct every line alike."""
    fast = _line_outcome(validate_module._check_line, line)
    validated = _line_outcome(_validated_line, line)
    assert fast == validated
    if isinstance(fast[0], Item):
        # model_copy updates the fields set in place (missing_category does).
        fast[0].model_copy(update={"category": "uncategorized"})


@given(_line_number)
@settings(max_examples=300, deadline=None)
def test_a_remembered_number_is_the_number(value: Any) -> None:
    validate_module._DECIMALS.clear()
    first = validate_module._usable_decimal(value)
    again = validate_module._usable_decimal(value)
    expected = (
        None if isinstance(value, bool) or value is None else validate_module._to_decimal(value)
    )
    assert first == again == expected
    if isinstance(value, int | float) and not isinstance(value, bool):
        # 1 and 1.0 share a remembered result: the same number.
        assert (
            validate_module._usable_decimal(float(value) if isinstance(value, int) else value)
            == first
        )


def test_long_numbers_are_not_remembered() -> None:
    validate_module._DECIMALS.clear()
    for digits in range(40, 240):
        validate_module._usable_decimal("1" * 10 + "." + "5" * digits)
        validate_module._usable_decimal(10**digits)
    assert validate_module._DECIMALS == {}


@given(_line_text)
@settings(max_examples=300, deadline=None)
def test_a_label_kept_as_sent_is_one_free_label_keeps_unchanged(text: str) -> None:
    validate_module._STORABLE.clear()
    corrections: list[str] = []
    unchanged = validate_module.free_label(f" {text} ", "category", corrections) == text
    expected = unchanged and not corrections
    # Asked twice: the second answer comes from the remembered labels.
    assert validate_module._storable_as_sent(text) is expected
    assert validate_module._storable_as_sent(text) is expected
    assert (text in validate_module._STORABLE) is expected


def test_remembered_labels_stay_bounded() -> None:
    validate_module._STORABLE.clear()
    for n in range(validate_module._STORABLE_MAX + 10):
        assert validate_module._storable_as_sent(f"sku-{n}")
    assert len(validate_module._STORABLE) <= validate_module._STORABLE_MAX


def _cleaned(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as `_validate` hands it to the model: labels cleaned."""
    doc = dict(doc)
    validate_module._clean_labels(doc, "click", [])
    return doc


def _as_validated(event: Any) -> Any:
    """Everything validation sets on a model, with each value's type."""
    return (
        type(event),
        [(name, type(value), value) for name, value in event.__dict__.items()],
        event.__pydantic_fields_set__,
        event.__pydantic_extra__,
        event.__pydantic_private__,
        event.model_dump(),
        event.profile_id,
    )


_leaf = st.sampled_from(ADVERSARIAL_VALUES) | st.text(max_size=12) | st.integers()


@st.composite
def _broken_documents(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Schema-valid events of `kind`, some with one leaf (a line's too)
    replaced, some with a field dropped, as broken producers send them."""
    doc: dict[str, Any] = draw(valid_documents(kind))
    change = draw(st.sampled_from(["none", "leaf", "drop"]))
    if change == "leaf":
        path = draw(st.sampled_from(leaf_paths(doc)))
        doc = replaced(doc, path, draw(_leaf))
    elif change == "drop" and doc:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    return doc


def _click_as_sent_agrees(doc: dict[str, Any]) -> bool:
    """The fast build gives exactly what validation gives, or stands aside;
    True when it built the click."""
    doc = _cleaned(doc)
    built = validate_module.click_as_sent(dict(doc))
    try:
        validated: Click | None = Click.model_validate(doc)
    except ValidationError:
        validated = None
    if built is None:
        return False
    assert validated is not None, doc  # never accepts what validation refuses
    assert _as_validated(built) == _as_validated(validated)
    return True


CLICK = {
    "type": "click",
    "event_id": "ev-1",
    "customer_id": "cust-1",
    "anonymous_id": "cookie-9",
    "ts": 1_767_225_600_000,
    "session_id": "sess-9",
    "page_type": "product",
    "product_id": "sku-123",
    "category": "Schuhe & Taschen",
    "channel": "email",
    "device": "mobile",
}


def _sent_click_agrees(doc: dict[str, Any] | bytes) -> bool:
    """A batch's way round the Click object (`sent_click` and
    `sent_click_delta`) gives what validating the click and `to_delta` give:
    the same delta, profile, time and corrections — or stands aside, and
    never for a click validation accepts as sent; True when it took it."""
    raw = doc if isinstance(doc, bytes) else render(doc)
    fast = validate_module.sent_click(raw, NOW, RULES)
    general = validate(raw, "click", NOW, RULES)
    if fast is None:
        if isinstance(general, Accepted):  # only by the model's validation
            assert validate_module.click_as_sent(_cleaned(jsontext.loads(raw))) is None, raw
        return False
    assert isinstance(general, Accepted), raw  # never accepts what validation refuses
    assert (fast.profile_id, fast.ts_ms, fast.corrections) == (
        general.event.profile_id,
        general.ts_ms,
        general.corrections,
    )
    delta = sent_click_delta(fast, "clicks:3:0", 17, UTC)
    assert delta == to_delta(general.event, general.ts_ms, "clicks:3:0", 17, RULES.currencies)
    return True


@given(_broken_documents("click"))
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_click_built_without_validation_is_the_validated_click(doc: dict[str, Any]) -> None:
    _click_as_sent_agrees(doc)
    _sent_click_agrees(doc)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        "\ufeff".encode() + json.dumps(CLICK).encode(),
        json.dumps({**CLICK, "ts": "2026-01-01T01:00:00Z"}).encode(),  # ahead of NOW
        json.dumps({**CLICK, "ts": "1989-12-31T23:00:00Z"}).encode(),
        json.dumps({**CLICK, "ts": "yesterday"}).encode(),
        json.dumps({**CLICK, "customer_id": "email:ann@example.com"}).encode(),
        json.dumps({**CLICK, "page_type": "PRODUCT "}).encode(),
        json.dumps({**CLICK, "channel": "Newsletter"}).encode(),  # unknown: "other"
        json.dumps({**CLICK, "device": 42}).encode(),  # coerced: "42"
        b"x" * 70_000,
    ],
)
def test_a_click_judged_in_the_batch_as_by_validation(raw: bytes) -> None:
    """Bytes and times only `validate` judges, where `sent_click` stands
    aside (the reason comes from validation); labels it cleans as
    validation does, with the same corrections."""
    _sent_click_agrees(raw)
    if validate_module.sent_click(raw, NOW, RULES) is None:
        assert isinstance(run(raw, "click"), Rejected) or b'"device": 42' in raw


def test_every_leaf_of_a_click_with_every_adversarial_value() -> None:
    sample = dict(CLICK)
    assert _click_as_sent_agrees(sample)
    assert _sent_click_agrees(sample)
    built = taken = 0
    for path in leaf_paths(sample):
        for value in [*ADVERSARIAL_VALUES, " padded ", "x" * 129, "{brace}", "loyalty_card:1"]:
            built += _click_as_sent_agrees(replaced(sample, path, value))
            taken += _sent_click_agrees(replaced(sample, path, value))
        built += _click_as_sent_agrees({k: v for k, v in sample.items() if k != path[0]})
        taken += _sent_click_agrees({k: v for k, v in sample.items() if k != path[0]})
    assert built > 20  # many changes still leave a click built without validation
    assert taken > 20


def test_a_shops_clicks_are_built_without_validation() -> None:
    """The fast path is what a simulated shop's clicks take (else it would
    cost a check and save nothing)."""
    events, _ = generate(customers=60, days=60, seed=4, start_ms=1_767_225_600_000)
    clicks = [e for e in events if e["type"] == "click"]
    taken = sum(_click_as_sent_agrees(json.loads(json.dumps(c))) for c in clicks)
    assert len(clicks) > 500 and taken == len(clicks)
    assert all(_sent_click_agrees(c) for c in clicks if c["ts"] <= NOW)
    # Shops that send RFC 3339 times too.
    for click in clicks[:200]:
        click["ts"] = "2025-03-30T01:59:59.250+01:00"
        assert _click_as_sent_agrees(click)
        assert _sent_click_agrees(click)


def _sent_order_agrees(doc: dict[str, Any] | bytes, kind: str, rules: Rules = RULES) -> bool:
    """A batch's way round an order's model and its lines' Items
    (`sent_order` and `sent_order_delta`) gives what validating the order and
    `to_delta` give: the same delta, profile, time and corrections — or
    stands aside (validation then says why, or drops the lines); True
    when it took the order."""
    raw = doc if isinstance(doc, bytes) else render(doc)
    fast = validate_module.sent_order(raw, kind, NOW, rules)
    general = validate(raw, kind, NOW, rules)  # type: ignore[arg-type]
    if fast is None:
        return False
    assert isinstance(general, Accepted), raw  # never accepts what validation refuses
    assert general.dropped_lines == (), raw  # nor a line validation drops
    assert (fast.profile_id, fast.ts_ms, fast.corrections) == (
        general.event.profile_id,
        general.ts_ms,
        general.corrections,
    ), raw
    delta = sent_order_delta(fast, "purchases:3:0", 17, UTC, rules.currencies)
    assert delta == to_delta(general.event, general.ts_ms, "purchases:3:0", 17, rules.currencies)
    return True


_orders = st.sampled_from(["purchase", "store_receipt"]).flatmap(
    lambda kind: _broken_documents(kind).map(lambda doc: (doc, kind))
)


# (fewer than for clicks: an order's lines make each example ~15x dearer to
# draw; every leaf of an order is also changed in the test after this one)
@given(_orders)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_an_order_taken_without_its_model_is_the_validated_order(
    case: tuple[dict[str, Any], str],
) -> None:
    _sent_order_agrees(*case)


RECEIPT = {
    "type": "store_receipt",
    "event_id": "till-7-000412",
    "customer_id": "cust-1",
    "loyalty_card": "4006381333931",
    "ts": "2025-11-28T18:42:07+01:00",
    "receipt_id": "000412",
    "store_id": "berlin-mitte",
    "items": [
        {"sku": "4000417025005", "category": "Molkereiprodukte", "quantity": 2, "unit_price": 1.19},
        {
            "sku": "2100000012345",
            "category": "Obst & Gemüse",
            "quantity": 0.532,
            "unit_price": "3.99",
        },
        {"sku": "PFAND-025", "quantity": -4, "unit_price": 0.25},
    ],
    "total": 4.50,
    "currency": "EUR",
    "payment_method": "girocard",
}
ORDER = {
    "type": "purchase",
    "event_id": "ev-7",
    "anonymous_id": "cookie-9",
    "ts": 1_767_225_000_000,
    "order_id": "SO-100234",
    "items": [{"sku": "sku-123", "category": "Shoes", "quantity": 1, "unit_price": 89.9}],
    "total": 89.9,
    "currency": "USD",
    "payment_method": "paypal",
    "channel": "email",
}


@pytest.mark.parametrize(("sample", "kind"), [(RECEIPT, "store_receipt"), (ORDER, "purchase")])
def test_every_leaf_of_an_order_with_every_adversarial_value(
    sample: dict[str, Any], kind: str
) -> None:
    assert _sent_order_agrees(sample, kind)
    taken = 0
    for path in leaf_paths(sample):
        for value in [*ADVERSARIAL_VALUES, " padded ", "x" * 129, "{brace}", "loyalty_card:1"]:
            taken += _sent_order_agrees(replaced(sample, path, value), kind)
        taken += _sent_order_agrees(replaced(sample, path[:-1], _without(sample, path)), kind)
    assert taken > 40  # many changes still leave an order taken without its model


def _without(doc: dict[str, Any], path: tuple[Any, ...]) -> Any:
    """The container at path[:-1] without its entry path[-1]."""
    container = doc
    for step in path[:-1]:
        container = container[step]
    if isinstance(container, dict):
        return {k: v for k, v in container.items() if k != path[-1]}
    return [v for i, v in enumerate(container) if i != path[-1]]


@pytest.mark.parametrize(
    "change",
    [
        {"items": [{**RECEIPT["items"][0], "quantity": 0}, RECEIPT["items"][1]]},  # a correction
        {"items": [{**RECEIPT["items"][0], "quantity": 5000}, RECEIPT["items"][1]]},  # dropped
        {"items": [{**RECEIPT["items"][0], "category": None}]},  # uncategorized
        {"items": [{**RECEIPT["items"][0], "quantity": 0}]},  # nothing left: refused
        {"total": "n/a"},
        {"total": 99.0},
        {"currency": "eur"},  # cleaned by the model
        {"currency": "GBP"},  # not configured
        {"ts": "2026-01-01T01:00:00Z"},  # ahead of NOW
        {"customer_id": None, "loyalty_card": "{4006381333931}"},
        {"customer_id": None, "loyalty_card": " 4006381333931"},
        {"payment_method": 42},
        {"receipt_id": 412},
    ],
)
def test_a_receipt_judged_in_the_batch_as_by_validation(change: dict[str, Any]) -> None:
    """What validation corrects, drops or refuses: taken with the same
    corrections, or left to validation."""
    doc = {k: v for k, v in {**RECEIPT, **change}.items() if v is not None}
    _sent_order_agrees(doc, "store_receipt")
    # Rules built by hand, not by the settings (which write codes in capitals).
    _sent_order_agrees(doc, "store_receipt", Rules(currencies={"eur": 1.0}))


def test_real_grocery_baskets_are_taken_as_validation_takes_them() -> None:
    """dunnhumby's Complete Journey baskets as a till sends them (weighed and
    fuel lines, zero quantities, totals that do not add up, lines without a
    category): every one the fast path takes agrees with validation, and it
    takes most of them."""
    receipts = grocery_receipts(households=25)
    rules = Rules(currencies={"USD": 1.0}, min_ts_ms=0)
    taken = sum(_sent_order_agrees(r, "store_receipt", rules) for r in receipts)
    corrected = sum(
        bool(validate_module.sent_order(render(r), "store_receipt", NOW, rules).corrections)  # type: ignore[union-attr]
        for r in receipts[:300]
        if validate_module.sent_order(render(r), "store_receipt", NOW, rules) is not None
    )
    assert len(receipts) > 1000 and taken > 0.8 * len(receipts)
    assert corrected > 10  # corrections are counted on the fast path too


def test_a_shops_orders_are_taken_without_their_models() -> None:
    """The fast path is what a simulated shop's orders take, in both time
    forms and at every configured currency's rate."""
    events, _ = generate(customers=60, days=60, seed=4, start_ms=NOW - 61 * 86_400_000)
    orders = [e for e in events if e["type"] in ("purchase", "store_receipt")]
    rules = Rules(currencies={"EUR": 1.0, "USD": 0.92, "GBP": 1.17})
    assert len(orders) > 100
    for order in orders:
        assert _sent_order_agrees(order, order["type"], rules)
        for currency in ("USD", "GBP"):
            assert _sent_order_agrees({**order, "currency": currency}, order["type"], rules)
        order["ts"] = "2025-03-30T01:59:59.250+01:00"
        assert _sent_order_agrees(order, order["type"], rules)
