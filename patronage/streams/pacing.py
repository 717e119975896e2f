"""Background passes (re-scoring after a promotion, re-valuing after a refit)
kept to a share of the worker's time.

Slices that merely yield to ingest still take every idle moment of the loop
(and of Redis, on the same cores): at 1k events/s the p50 of events acked
while such a pass ran was twice that of the others (docs/benchmarks.md).
After each slice the pass rests in proportion to the time the slice took,
so it takes at most `PATRONAGE_BACKGROUND_PASS_SHARE` of the time; a pass
over many customers takes longer instead. A slice's time is wall time, so on
a saturated loop it includes ingest work done during the slice's awaits, and
the pass slows down further: ingest first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def rest_after(busy_s: float, share: float) -> float:
    """Seconds to rest after `busy_s` of work so the work is `share` of the time."""
    if share >= 1.0 or busy_s <= 0.0:
        return 0.0
    return busy_s * (1.0 - share) / share


class Pacer:
    """Runs the slices of one pass: each waits for ingest (when told how),
    then rests after itself. `busy_s` adds up the slices' own time."""

    def __init__(
        self,
        share: float,
        wait_for_ingest: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.share = share
        self.wait_for_ingest = wait_for_ingest
        self.clock = clock
        self.sleep = sleep
        self.busy_s = 0.0

    async def slice(self, work: Callable[[], Awaitable[T]]) -> T:
        if self.wait_for_ingest is not None:
            await self.wait_for_ingest()
        started = self.clock()
        result = await work()
        busy = self.clock() - started
        self.busy_s += busy
        await self.sleep(rest_after(busy, self.share))  # sleep(0): ingest runs between slices
        return result
