"""How long the broker holds the input consumer's fetches: gathered while
records flow, answered at the first record while they do not.

A fetch gathered for `fetch_wait_ms` (or until FETCH_GATHER_BYTES are ready)
carries a few milliseconds of records instead of one or two, which a live
worker at 1k events/s needs (docs/benchmarks.md, "…and fuller fetches").
Held that way while nothing arrives, though, every fetch comes back empty
after the wait: an idle worker asked 200 times a second and took 0.15 of a
core, the broker 0.12 (docs/benchmarks.md, "An idle worker…"). So the wait
follows the stream: after a fetch with two records or more the next ones
gather; after one with fewer the broker answers at the first record and
otherwise holds the fetch for IDLE_FETCH_WAIT_MS (Kafka's own default) —
no polling, and the first record after a quiet spell is not held back.

aiokafka builds each fetch request from two attributes of its fetcher
(0.12-0.14); there is no public way to change them on a running consumer.
Without them (another aiokafka) the consumer keeps the wait it was made
with, as before, and says so once.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("patronage.ingest")

# With a fetch wait, the broker answers once this much is ready or the wait
# is over: a backlog is still fetched at once, a live stream every few ms.
# Well under a partition's share of a fetch (1 MiB): at 1 MiB drains were
# slower and the broker spent twice the CPU per event (docs/benchmarks.md).
FETCH_GATHER_BYTES = 1 << 16
# Between records: the broker holds a fetch this long unless one arrives.
IDLE_FETCH_WAIT_MS = 500
# A fetch with at least this many records: the stream is flowing.
GATHER_FROM_RECORDS = 2


def fetch_params(records: int, wait_ms: int) -> tuple[int, int]:
    """(fetch max wait ms, fetch min bytes) for the next fetches, after a
    fetch that brought `records`; `wait_ms` is the `fetch_wait_ms` setting
    (0: never gather)."""
    if wait_ms > 0 and records >= GATHER_FROM_RECORDS:
        return wait_ms, FETCH_GATHER_BYTES
    return IDLE_FETCH_WAIT_MS, 1


class FetchGather:
    """Sets the input consumer's fetch wait from what its fetches bring."""

    def __init__(self, consumer: Any, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        self.fetcher = getattr(consumer, "_fetcher", None)
        self.current: tuple[int, int] | None = None
        if self.fetcher is None or not all(
            hasattr(self.fetcher, name) for name in ("_fetch_max_wait_ms", "_fetch_min_bytes")
        ):
            self.fetcher = None
            log.warning(
                "this aiokafka's fetcher cannot change its fetch wait; "
                "fetches keep PATRONAGE_FETCH_WAIT_MS while idle"
            )

    def after(self, records: int) -> None:
        """After a fetch of `records` (counted over its partitions)."""
        if self.fetcher is None:
            return
        wanted = fetch_params(records, self.wait_ms)
        if wanted != self.current:
            self.fetcher._fetch_max_wait_ms, self.fetcher._fetch_min_bytes = wanted
            self.current = wanted
