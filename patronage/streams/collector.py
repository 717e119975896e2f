"""The garbage collector held off while a batch is in hand."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

# The longest the collector stays off for one batch: a batch stalled on
# Redis retries must not keep other tasks' garbage cycles for minutes.
COLLECTOR_HOLD_MAX_S = 5.0


@contextlib.contextmanager
def collector_held(longest_s: float = COLLECTOR_HOLD_MAX_S) -> Iterator[None]:
    """Automatic garbage collection off while a batch is fetched and worked
    on, on again when it is done (after `longest_s` at the latest).

    A batch is ~10^5 tracked objects (records, deltas, lists) alive for the
    whole batch; young collections during it promoted them to the old
    generation, which then triggered full collections walking the batch in
    hand: 30 of up to 163 ms in one 24 s drain, 3.5 s of collecting in all
    (docs/benchmarks.md). Freed by reference counting when the batch ends,
    they are never the collector's business. Other tasks' cycles made
    meanwhile wait for the end of the batch."""
    if not gc.isenabled():  # someone else holds it (a test, a profiler)
        yield
        return
    gc.disable()
    watchdog = asyncio.get_running_loop().call_later(longest_s, gc.enable)
    try:
        yield
    finally:
        watchdog.cancel()
        gc.enable()
