"""The event clock of a partition as a table: marks -> clock."""

from __future__ import annotations

import pytest

from patronage.models.clock import event_clock, with_batch

TOPICS = ("clicks", "purchases", "store-receipts")
NOW = 1_000_000_000.0
IDLE = 60_000.0

CASES = [
    ("nothing yet", {}, None),
    (
        "the slowest topic holds the clock",
        {
            "since": NOW - 5000,
            "hw:clicks": 900,
            "hw:purchases": 500,
            "hw:store-receipts": 700,
            "seen:clicks": NOW,
            "seen:purchases": NOW,
            "seen:store-receipts": NOW,
        },
        500,
    ),
    (
        "a topic quiet for longer than the idle time stops holding it",
        {
            "since": NOW - 500_000,
            "hw:clicks": 900,
            "hw:purchases": 500,
            "hw:store-receipts": 700,
            "seen:clicks": NOW,
            "seen:purchases": NOW - 120_000,
            "seen:store-receipts": NOW,
        },
        700,
    ),
    (
        "a topic that never delivered is waited for while the partition is young",
        {
            "since": NOW - 5000,
            "hw:clicks": 900,
            "hw:purchases": 500,
            "seen:clicks": NOW,
            "seen:purchases": NOW,
        },
        0,
    ),
    (
        "... and not after the idle time",
        {
            "since": NOW - 500_000,
            "hw:clicks": 900,
            "hw:purchases": 500,
            "seen:clicks": NOW,
            "seen:purchases": NOW,
        },
        500,
    ),
    (
        "all idle: the newest event time seen",
        {
            "since": NOW - 500_000,
            "hw:clicks": 900,
            "hw:purchases": 500,
            "seen:clicks": NOW - 100_000,
            "seen:purchases": NOW - 100_000,
        },
        900,
    ),
]


@pytest.mark.parametrize(("name", "marks", "clock"), CASES, ids=[c[0] for c in CASES])
def test_event_clock(name: str, marks: dict[str, float], clock: float | None) -> None:
    assert event_clock(marks, TOPICS, NOW, IDLE) == clock


def test_a_batch_moves_its_topics_only_forward() -> None:
    marks = {"since": NOW - 10, "hw:clicks": 900.0, "seen:clicks": NOW - 10}
    after = with_batch(marks, {"clicks": 800, "purchases": 950}, NOW)
    assert after["hw:clicks"] == 900 and after["hw:purchases"] == 950
    assert after["seen:purchases"] == NOW and after["since"] == NOW - 10
