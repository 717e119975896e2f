"""Order-history conversion (replay) and simulator determinism."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patronage.models.replay import convert, parse_mapping
from patronage.models.simulate import generate, simulated_stream, to_jsonl
from patronage.models.validate import Rules

NOW = 1_767_225_600_000
MAPPING = parse_mapping(
    "customer_id=cust,ts=when,amount=amount,order_id=order,sku=sku,category=cat,"
    "quantity=qty,unit_price=price,store=store"
)
ROWS = [
    {
        "cust": "c1",
        "when": "2025-12-01 10:00:00",
        "amount": "6.00",
        "order": "o1",
        "sku": "a",
        "cat": "food",
        "qty": "2",
        "price": "3.00",
        "store": "",
    },
    {
        "cust": "c1",
        "when": "2025-12-01 10:00:00",
        "amount": "4.50",
        "order": "o1",
        "sku": "b",
        "cat": "toys",
        "qty": "1",
        "price": "4.50",
        "store": "",
    },
    {
        "cust": "c2",
        "when": "2025-11-01T09:00:00Z",
        "amount": "10",
        "order": "r9",
        "sku": "c",
        "cat": "food",
        "qty": "1",
        "price": "10",
        "store": "s3",
    },
    {
        "cust": "",
        "when": "2025-11-02T09:00:00Z",
        "amount": "1",
        "order": "x",
        "sku": "d",
        "cat": "food",
        "qty": "1",
        "price": "1",
        "store": "",
    },
    {
        "cust": "c3",
        "when": "2025-11-03T09:00:00Z",
        "amount": "abc",
        "order": "y",
        "sku": "e",
        "cat": "food",
        "qty": "1",
        "price": "",
        "store": "",
    },
    {
        "cust": "c4",
        "when": "2031-01-01T00:00:00Z",
        "amount": "5",
        "order": "z",
        "sku": "f",
        "cat": "food",
        "qty": "1",
        "price": "5",
        "store": "",
    },
]


def test_rows_become_time_ordered_contract_events() -> None:
    out = convert(ROWS, MAPPING, Rules(), NOW)
    assert out.rows == 6
    assert [e["type"] for e in out.events] == ["store_receipt", "purchase"]
    receipt, purchase = out.events
    assert receipt["store_id"] == "s3" and receipt["receipt_id"] == "r9"
    assert [i["sku"] for i in purchase["items"]] == ["a", "b"]  # one order, two lines
    assert purchase["total"] == pytest.approx(10.5)
    assert purchase["event_id"] == "replay:o1"
    assert receipt["ts"] < purchase["ts"]
    assert sum(out.rejected.values()) == 3
    assert out.rejected == {"not_a_number": 1, "future_timestamp": 1, "schema": 1}
    assert "customer_id" in out.examples["schema"]


def test_amount_only_mapping() -> None:
    rows = [{"c": "c9", "t": "1764583200000", "a": "19.99"}]
    out = convert(rows, parse_mapping("customer_id=c,ts=t,amount=a"), Rules(), NOW)
    (event,) = out.events
    assert event["items"] == [
        {"sku": "unknown", "category": None, "quantity": 1, "unit_price": 19.99}
    ]
    assert event["ts"] == 1764583200000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("customer_id=c,ts=t", "needs amount"),
        ("customer_id=c,ts=t,amount=a,shoe=s", "unknown field"),
        ("customer_id", "not name=column"),
    ],
)
def test_bad_mapping(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mapping(spec)


def test_same_seed_same_stream_bytes(tmp_path: Path) -> None:
    """Byte-identical files from two processes with different hash seeds."""
    digests = []
    for hash_seed in ("1", "99"):
        out = tmp_path / f"s{hash_seed}.jsonl"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "patronage.streams.cli",
                "events",
                "simulate",
                "--customers",
                "50",
                "--days",
                "60",
                "--seed",
                "7",
                "--start",
                "2026-01-01T00:00:00Z",
                "--out",
                str(out),
            ],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            check=True,
            capture_output=True,
        )
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    in_process, _ = simulated_stream(50, 60, 7, 1_767_225_600_000)
    assert hashlib.sha256(to_jsonl(in_process).encode()).hexdigest() == digests[0]
    other, _ = simulated_stream(50, 60, 8, 1_767_225_600_000)
    assert to_jsonl(other) != to_jsonl(in_process)
    # By default the stream is as identifiers see it: cookies, cards, links.
    types = {e["type"] for e in in_process}
    assert {"link", "click", "store_receipt"} <= types
    assert any("anonymous_id" in e and "customer_id" not in e for e in in_process)
    assert any(e["type"] == "store_receipt" and "customer_id" not in e for e in in_process)


def test_simulated_personas_and_lapses() -> None:
    events, personas = generate(300, 180, 3, NOW - 180 * 86_400_000)
    assert set(personas.values()) == {
        "weekly_store",
        "online_browser",
        "omnichannel_vip",
        "bargain_hunter",
        "one_off",
    }
    kinds = {e["type"] for e in events}
    assert kinds == {"click", "purchase", "store_receipt", "customer_attributes"}
    assert all(events[i]["ts"] <= events[i + 1]["ts"] for i in range(len(events) - 1))
    receipts = [e for e in events if e["type"] == "store_receipt"]
    assert all(e["loyalty_card"] for e in receipts)


def test_simulated_bad_events_are_all_rejected() -> None:
    from patronage.models.simulate import with_bad_events
    from patronage.models.validate import Rejected, validate

    events, _ = generate(80, 60, 4, NOW - 61 * 86_400_000)
    mixed = with_bad_events(events, 0.05, 4)
    bad = [e for e in mixed if isinstance(e, dict) and str(e["event_id"]).startswith("bad-")]
    assert len(bad) > 0.03 * len(events)
    for event in bad:
        raw = json.dumps(event).encode()
        assert isinstance(validate(raw, event["type"], NOW, Rules()), Rejected), event
    assert with_bad_events(events, 0.05, 4) == mixed  # deterministic
