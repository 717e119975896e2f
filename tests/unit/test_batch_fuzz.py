"""No payload can escape the per-record guard of batch preparation.

Payloads come from the published JSON Schemas with leaves replaced by what
broken producers send (tests/schema_fuzz.py), not from our own generators:
whatever a record holds, preparing it yields either its delta or exactly one
record-level dead letter with a reason, the letter fits the broker's message
limit, and an accepted delta can be encoded for Redis and applied by the
reference profile math.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from patronage.models.batch import Record, prepare_batch
from patronage.models.profile import ProfileConfig, fold, packed_deltas
from patronage.models.validate import Rules
from tests.schema_fuzz import (
    ADVERSARIAL_VALUES,
    KINDS,
    TOPIC_OF,
    any_payload,
    leaf_paths,
    render,
    replaced,
)

NOW = 1_767_225_600_000
RULES = Rules(currencies={"EUR": 1.0, "USD": 0.9})
KIND_OF_TOPIC = {topic: kind for kind, topic in TOPIC_OF.items()}
BROKER_MESSAGE_LIMIT = 1_000_000

SAMPLES: dict[str, dict[str, Any]] = {
    "click": {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "ts": "2025-12-30T18:04:05.120+01:00",
        "session_id": "sess-9",
        "page_type": "product",
        "product_id": "sku-123",
        "category": "shoes",
        "channel": "email",
        "device": "mobile",
    },
    "purchase": {
        "event_id": "evt-2",
        "customer_id": "cust-1",
        "ts": NOW - 3_600_000,
        "order_id": "A-1001",
        "items": [
            {"sku": "sku-1", "category": "shoes", "quantity": 1, "unit_price": 59.9},
            {"sku": "sku-2", "category": "socks", "quantity": 3, "unit_price": "4.99"},
        ],
        "total": 74.87,
        "currency": "EUR",
        "payment_method": "card",
        "channel": "email",
    },
    "store_receipt": {
        "event_id": "evt-3",
        "customer_id": "cust-1",
        "ts": "2025-12-31T09:15:00Z",
        "receipt_id": "0042-7781",
        "store_id": "berlin-mitte",
        "items": [
            {"sku": "4011", "category": "fruit", "quantity": 0.532, "unit_price": 2.19},
            {"sku": "milk", "category": "dairy", "quantity": -1, "unit_price": 1.09},
        ],
        "total": 0.07,
        "currency": "EUR",
        "payment_method": "cash",
        "loyalty_card": "DE-55-1234",
    },
    "customer_attributes": {
        "event_id": "evt-4",
        "customer_id": "cust-1",
        "ts": NOW - 1000,
        "attributes": {"birth_year": 1984, "children": 2, "region": "BE", "consent_email": True},
    },
}


def check_isolation(kind: str, payload: bytes) -> None:
    record = Record(TOPIC_OF[kind], 3, 41, b"cust-1", payload)
    batch = prepare_batch([record], KIND_OF_TOPIC, RULES, NOW, dt.UTC)
    record_letters = [letter for _, letter in batch.dead_letters if letter.line is None]
    applied = sum(len(deltas) for deltas in batch.by_customer.values())
    assert applied + len(record_letters) == 1, (payload[:200], batch)
    for _, letter in batch.dead_letters:
        assert letter.reason and letter.error
        assert letter.payload_sha256 and letter.payload_bytes >= 0
        assert len(letter.model_dump_json().encode("utf-8")) < BROKER_MESSAGE_LIMIT
    for customer_id, deltas in batch.by_customer.items():
        customer_id.encode("utf-8")
        assert "{" not in customer_id and "}" not in customer_id
        packed_deltas(deltas, {d.source: d.source for d in deltas})
        fold(deltas, ProfileConfig())


@settings(
    # hypothesis-jsonschema draws ~30 ms an example: enough here to catch a
    # regression in seconds; the integration tier sends 10,000 through Kafka.
    max_examples=int(os.environ.get("PATRONAGE_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(any_payload())
def test_schema_derived_payloads_never_escape_the_guard(kind_payload: tuple[str, bytes]) -> None:
    check_isolation(*kind_payload)


@pytest.mark.parametrize("kind", KINDS)
def test_every_leaf_of_a_real_event_with_every_adversarial_value(kind: str) -> None:
    sample = SAMPLES[kind]
    check_isolation(kind, render(sample))
    for path in leaf_paths(sample):
        for value in ADVERSARIAL_VALUES:
            check_isolation(kind, render(replaced(sample, path, value)))


def test_the_sample_events_are_good() -> None:
    """The base of the leaf-by-leaf test is accepted, so mutations start from good data."""
    for kind, sample in SAMPLES.items():
        record = Record(TOPIC_OF[kind], 0, 0, None, render(sample))
        batch = prepare_batch([record], KIND_OF_TOPIC, RULES, NOW, dt.UTC)
        assert not batch.dead_letters, batch.dead_letters
        assert sum(len(d) for d in batch.by_customer.values()) == 1


def test_a_huge_payload_becomes_a_bounded_letter() -> None:
    raw = b'{"event_id": "' + b"\x01" * 900_000 + b'"}'
    record = Record("clicks", 0, 1, None, raw)
    batch = prepare_batch([record], KIND_OF_TOPIC, RULES, NOW, dt.UTC)
    (_, letter), *_ = batch.dead_letters
    assert letter.error == "payload_too_large"
    assert letter.payload_truncated and letter.payload_bytes == len(raw)
    assert len(letter.model_dump_json().encode()) < BROKER_MESSAGE_LIMIT


class _ZoneFailingAt(dt.tzinfo):
    """A zone whose offset raises for one instant: a failure inside the delta
    builder (it asks the zone for the customer's day). Injected as an input,
    not by patching `to_delta`, which the compiled `prepare_batch` calls
    directly (patronage/compiled.py)."""

    def __init__(self, failing_ms: int) -> None:
        self.failing = dt.datetime.fromtimestamp(failing_ms / 1000, tz=dt.UTC).replace(tzinfo=None)

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        if when is not None and when.replace(tzinfo=None) == self.failing:
            raise ArithmeticError("decimal overflow in items.0")
        return dt.timedelta(0)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)


def test_an_exception_inside_preparation_becomes_a_letter_naming_it() -> None:
    """Whatever raises (here: the delta builder) costs that record only."""
    poison_ms = SAMPLES["purchase"]["ts"] + 7_000
    good = Record("purchases", 0, 1, None, render(SAMPLES["purchase"]))
    poison = Record(
        "purchases", 0, 2, None, render({**SAMPLES["purchase"], "order_id": "X", "ts": poison_ms})
    )
    zone = _ZoneFailingAt(poison_ms)
    batch = prepare_batch([good, poison], KIND_OF_TOPIC, RULES, NOW, zone)
    assert sum(len(d) for d in batch.by_customer.values()) == 1
    [(_, letter)] = batch.dead_letters
    assert letter.offset == 2 and letter.error == "unprocessable"
    assert "ArithmeticError" in letter.reason and "items.0" in letter.reason
