"""The input consumer's fetch wait, from what its fetches bring (fetching.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from patronage.streams.fetching import (
    FETCH_GATHER_BYTES,
    IDLE_FETCH_WAIT_MS,
    FetchGather,
    fetch_params,
)

CASES = [
    # (records the last fetch brought, fetch_wait_ms setting, (max wait ms, min bytes))
    (0, 5, (IDLE_FETCH_WAIT_MS, 1)),  # nothing: answered at the first record
    (1, 5, (IDLE_FETCH_WAIT_MS, 1)),  # a trickle: each record as it comes
    (2, 5, (5, FETCH_GATHER_BYTES)),  # flowing: gathered
    (20_000, 5, (5, FETCH_GATHER_BYTES)),  # a backlog
    (20_000, 40, (40, FETCH_GATHER_BYTES)),
    (20_000, 0, (IDLE_FETCH_WAIT_MS, 1)),  # gathering off: Kafka's defaults always
]


@pytest.mark.parametrize(("records", "wait_ms", "expected"), CASES)
def test_fetch_params(records: int, wait_ms: int, expected: tuple[int, int]) -> None:
    assert fetch_params(records, wait_ms) == expected


def test_the_fetcher_is_set_only_when_the_wait_changes() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=5, _fetch_min_bytes=FETCH_GATHER_BYTES)
    gather = FetchGather(SimpleNamespace(_fetcher=fetcher), 5)
    gather.after(0)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (IDLE_FETCH_WAIT_MS, 1)
    fetcher._fetch_max_wait_ms = 123  # not touched while the wait stands
    gather.after(1)
    assert fetcher._fetch_max_wait_ms == 123
    gather.after(300)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (5, FETCH_GATHER_BYTES)


def test_a_consumer_without_the_fetcher_attributes_keeps_its_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another aiokafka: the worker runs on with the wait it was made with."""
    with caplog.at_level(logging.WARNING, logger="patronage.ingest"):
        gather = FetchGather(SimpleNamespace(_fetcher=SimpleNamespace()), 5)
    gather.after(0)
    gather.after(100)
    assert gather.current is None
    assert "cannot change its fetch wait" in caplog.text
