"""Background passes (re-scoring after a promotion, re-valuing after a refit)
kept to a share of the worker's time.

Slices that merely yield to ingest still take every idle moment of the loop
(and of Redis, on the same cores): at 1k events/s the p50 of events acked
while such a pass ran was twice that of the others (docs/benchmarks.md).
After each slice the pass rests in proportion to the time the slice took,
so it takes at most `PATRONAGE_BACKGROUND_PASS_SHARE` of the time; a pass
over many customers takes longer instead. A slice's time is wall time, so on
a saturated loop it includes ingest work done during the slice's awaits, and
the pass slows down further: ingest first. And the share itself shrinks
while ingest is busy (`pass_share`): the pass leaves ingest what ingest took
since the slice before, plus INGEST_HEADROOM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Of the worker's time, what a pass leaves to ingest beyond what ingest
# took lately: its bursts (a promotion's first batches, a GC) need room.
INGEST_HEADROOM = 0.25
# However busy ingest is, a pass still moves at this share (or its own, if less).
PASS_FLOOR_SHARE = 0.02


class BatchesInHand:
    """The input batches being worked on: `none` is set while there are
    none, and `busy_s()` says how long (time.perf_counter seconds) there
    was at least one — what a pass's `ingest_busy` reads."""

    def __init__(self) -> None:
        self.count = 0
        self.none = asyncio.Event()
        self.none.set()
        self._busy_s = 0.0
        self._since = 0.0

    def enter(self) -> None:
        if not self.count:
            self._since = time.perf_counter()
        self.count += 1
        self.none.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._busy_s += time.perf_counter() - self._since
            self.none.set()

    def busy_s(self) -> float:
        if self.count:
            return self._busy_s + time.perf_counter() - self._since
        return self._busy_s


def pass_share(share: float, ingest_busy: float) -> float:
    """The share of the time a pass may take while ingest is busy
    `ingest_busy` of it: its own `share` while ingest leaves that and the
    headroom free, less as ingest needs more, never below the floor. At
    10k events/s with promotions a pass at its full quarter took the
    margin ingest needed: p99 469-647 ms against 275-318 at 0.05
    (docs/benchmarks.md). A share of 1 asks for no rests at all."""
    if share >= 1.0:
        return 1.0
    return min(share, max(PASS_FLOOR_SHARE, 1.0 - INGEST_HEADROOM - ingest_busy))


def rest_after(busy_s: float, share: float) -> float:
    """Seconds to rest after `busy_s` of work so the work is `share` of the time."""
    if share >= 1.0 or busy_s <= 0.0:
        return 0.0
    return busy_s * (1.0 - share) / share


class Pacer:
    """Runs the slices of one pass: each waits for ingest (when told how),
    then rests after itself. `busy_s` adds up the slices' own time.
    `ingest_busy`: seconds ingest has had a batch in hand so far (on
    `clock`); the rests then follow `pass_share` of ingest's load since the
    slice before."""

    def __init__(
        self,
        share: float,
        wait_for_ingest: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ingest_busy: Callable[[], float] | None = None,
    ) -> None:
        self.share = share
        self.wait_for_ingest = wait_for_ingest
        self.clock = clock
        self.sleep = sleep
        self.ingest_busy = ingest_busy
        self.busy_s = 0.0
        self.shares: list[float] = []  # each slice's share (a test reads them)
        self._mark = (clock(), ingest_busy() if ingest_busy is not None else 0.0)

    def _share_now(self) -> float:
        if self.ingest_busy is None:
            return self.share
        now, busy = self.clock(), self.ingest_busy()
        then, busy_then = self._mark
        self._mark = (now, busy)
        load = (busy - busy_then) / (now - then) if now > then else 0.0
        return pass_share(self.share, load)

    async def slice(self, work: Callable[[], Awaitable[T]]) -> T:
        if self.wait_for_ingest is not None:
            await self.wait_for_ingest()
        started = self.clock()
        result = await work()
        busy = self.clock() - started
        self.busy_s += busy
        share = self._share_now()
        self.shares.append(share)
        await self.sleep(rest_after(busy, share))  # sleep(0): ingest runs between slices
        return result
