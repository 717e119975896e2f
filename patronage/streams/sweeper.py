"""Lapse sweeps: each worker checks the due customers of the partitions it owns.

Due times live in Redis (one sorted set per partition), so a rebalance or a
restart moves them with the partition. A swept entry is removed only after its
alert is on Kafka; until then the next sweep finds it again, and the
deterministic alert id makes a re-send harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from patronage.models.lapse import (
    already_alerted,
    evaluate,
    finding_to_json,
    lapse_moment,
)
from patronage.models.profile import ProfileConfig
from patronage.streams.store import ProfileStore

log = logging.getLogger("patronage.sweeper")

SendFindings = Callable[[dict[str, list[bytes]]], Awaitable[None]]


class LapseSweeper:
    def __init__(
        self,
        store: ProfileStore,
        cfg: ProfileConfig,
        clock: str,
        batch: int,
        lateness_s: float,
        send: SendFindings,
    ) -> None:
        self.store = store
        self.rules = cfg.lapse
        self.clock = clock
        self.batch = batch
        self.lateness_ms = lateness_s * 1000
        self.send = send
        self.swept = 0
        self.last_duration_s = 0.0

    async def now_ms(self, partition: int) -> float:
        if self.clock == "event":
            watermark = await self.store.watermark(partition)
            return float(watermark) - self.lateness_ms if watermark else 0.0
        return time.time() * 1000

    async def sweep(self, partitions: Iterable[int]) -> int:
        """One pass over the owned partitions; returns customers examined."""
        started = time.monotonic()
        examined = 0
        for partition in sorted(partitions):
            examined += await self.sweep_partition(partition)
        self.swept += examined
        self.last_duration_s = time.monotonic() - started
        return examined

    async def sweep_partition(self, partition: int) -> int:
        now = await self.now_ms(partition)
        if now <= 0:
            return 0
        due = await self.store.due_customers(partition, now, self.batch)
        if not due:
            return 0
        reads = await self.store.read_for_sweep([customer for customer, _ in due])
        marks: list[tuple[str, str, str]] = []
        moves: list[tuple[str, float, float | None]] = []
        pending: dict[str, list[bytes]] = {}
        for (customer, score), (fields, outbox) in zip(due, reads, strict=True):
            if outbox:
                pending[customer] = outbox  # left by a crash before its send
            if not fields:
                moves.append((customer, score, None))
                continue
            finding = evaluate(fields, now, self.rules)
            if finding is not None:
                marks.append((customer, str(fields["last_seen"]), finding_to_json(finding)))
                moves.append((customer, score, None))
                continue
            moment = lapse_moment(fields, self.rules)
            if moment is None or already_alerted(fields):
                moves.append((customer, score, None))
            else:
                moves.append((customer, score, moment))
        if marks:
            pending.update(await self.store.mark_lapsed(marks))
        if pending:
            await self.send(pending)
        await self.store.reschedule(partition, moves)
        return len(due)
