"""Scoring decisions on their way out: on Kafka first, then in the profile.

A change message (segment or value tier) must be acknowledged before the
decision is stored, or a crash in between would lose it for good (the stored
profile would already agree with it). A batch's segment and tier decisions
share one wait for the acks and one Redis round trip, not two of each (at
5k events/s the median ack-to-visible latency fell 14-18 %,
docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from patronage.streams.types import DueMove, ProfileStoreT


@dataclass
class ScoreWrites:
    """Change messages sent (acks pending) and the fields to store after them."""

    acks: list[Awaitable[Any]] = field(default_factory=list)
    fields: dict[str, dict[str, str | int]] = field(default_factory=dict)
    # partition -> customer -> when to judge at-risk again (store.schedule_risk)
    risk_due: dict[int, dict[str, float]] = field(default_factory=dict)
    # partition -> lapse entries to move (ApplyResult.lapse_due), once the
    # alerts of their batch are out
    lapse_due: dict[int, list[DueMove]] = field(default_factory=dict)

    def store(self, customer_id: str, mapping: Mapping[str, str | int]) -> None:
        self.fields.setdefault(customer_id, {}).update(mapping)

    def schedule_risk(self, partition: int, customer_id: str, due_ms: float) -> None:
        self.risk_due.setdefault(partition, {})[customer_id] = due_ms

    async def flush(self, store: ProfileStoreT) -> set[str]:
        """Wait for every ack, then write (the at-risk and lapse schedules
        with the fields: one round trip); the customers whose profile was
        written (an erased one is not brought back)."""
        await asyncio.gather(*self.acks)
        self.acks = []
        if not self.fields and not self.risk_due and not self.lapse_due:
            return set()
        written = await store.store_scores(self.fields, self.risk_due, self.lapse_due)
        self.fields, self.risk_due, self.lapse_due = {}, {}, {}
        return written
