"""Lapse sweeps: each worker judges the due customers of the partitions it owns.

Ingest judges a customer's lapses whenever its events are applied; the sweep
does it for customers whose clock moved without events of their own (the
"not seen for two weeks" case). Due times live in Redis (one sorted set per
partition), so a rebalance or a restart moves them with the partition. A
swept entry is moved to the next due time only after its alerts are on
Kafka; until then the next sweep finds it again, and the deterministic alert
id makes a re-send harmless.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from patronage.models.clock import event_clock
from patronage.streams.types import ProfileStoreT

SendFindings = Callable[[dict[str, list[bytes]]], Awaitable[None]]
SweepPartition = Callable[[int, float], Awaitable[int]]


class LapseSweeper:
    def __init__(
        self,
        store: ProfileStoreT,
        clock: str,
        batch: int,
        lateness_s: float,
        idle_s: float,
        activity_topics: Sequence[str],
        send: SendFindings,
        wall: Callable[[], float] = time.time,
        also: SweepPartition | None = None,
    ) -> None:
        self.store = store
        self.wall = wall
        self.clock = clock
        self.batch = batch
        self.lateness_ms = lateness_s * 1000
        self.idle_ms = idle_s * 1000
        self.topics = list(activity_topics)
        self.send = send
        # Another partition-sharded queue swept at the same clocks (at-risk moments).
        self.also = also
        self.swept = 0
        self.last_duration_s = 0.0

    def clock_of(self, marks: Mapping[str, str | float] | None, wall_ms: float) -> float:
        """The clock lapses are judged against: the partition's event clock
        minus the lateness (event mode), or the wall clock."""
        if self.clock != "event":
            return wall_ms
        if marks is None:
            return 0.0
        clock = event_clock(marks, self.topics, wall_ms, self.idle_ms)
        return clock - self.lateness_ms if clock is not None else 0.0

    async def clocks(self, partitions: Iterable[int]) -> dict[int, float]:
        wall_ms = self.wall() * 1000
        owned = sorted(partitions)
        if self.clock != "event":
            return dict.fromkeys(owned, wall_ms)
        marks = await self.store.clock_marks(owned)
        return {p: self.clock_of(marks.get(p), wall_ms) for p in owned}

    async def sweep(self, partitions: Iterable[int]) -> int:
        """One pass over the owned partitions; returns customers examined."""
        started = time.monotonic()
        examined = 0
        for partition, clock in (await self.clocks(partitions)).items():
            examined += await self.sweep_partition(partition, clock)
            if self.also is not None:
                examined += await self.also(partition, clock)
        self.swept += examined
        self.last_duration_s = time.monotonic() - started
        return examined

    async def sweep_partition(self, partition: int, clock: float) -> int:
        if clock <= 0:
            return 0
        due = await self.store.due_customers(partition, clock, self.batch)
        if not due:
            return 0
        verdicts = await self.store.judge({customer: clock for customer, _ in due})
        pending = {c: outbox for c, (outbox, _) in verdicts.items() if outbox}
        if pending:
            await self.send(pending)
        moves = [(c, score, verdicts[c][1]) for c, score in due]
        await self.store.reschedule(partition, moves)
        return len(due)
