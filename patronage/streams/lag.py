"""Consumer-group lag read from Kafka itself (works while the worker is down)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorNotAvailableError

from patronage.streams.kafka_admin import commit_group_offsets
from patronage.streams.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    end: int
    start: int = 0  # log start offset (retention may have removed older records)
    oldest_waiting_s: float = 0.0  # age of the first record not yet committed

    @property
    def lag(self) -> int:
        return self.end - max(self.committed or 0, self.start)


async def group_lag(
    settings: Settings, topics: list[str] | None = None, waiting: bool = False
) -> list[PartitionLag]:
    """Lag per partition; with `waiting`, also how long the oldest unprocessed
    record has waited (one small fetch per partition that has a backlog)."""
    reader = LagReader(settings)
    try:
        return await reader.sample(topics, waiting)
    finally:
        await reader.close()


class LagReader:
    """Repeated lag samples over one admin client and one consumer: the worker
    samples every few seconds, and new connections each time cost the broker
    more than the reads. After a failure the next sample reconnects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None

    async def sample(
        self, topics: list[str] | None = None, waiting: bool = False
    ) -> list[PartitionLag]:
        if self._clients is None:
            kwargs = self.settings.kafka_client_kwargs()
            admin = AIOKafkaAdminClient(**kwargs)
            consumer = AIOKafkaConsumer(**kwargs, enable_auto_commit=False)
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _close(admin, consumer)
                raise
            self._clients = (admin, consumer)
        admin, consumer = self._clients
        try:
            return await _read(admin, consumer, self.settings, topics, waiting)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._clients is not None:
            clients, self._clients = self._clients, None
            await _close(*clients)


async def _close(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.stop()
    finally:
        await admin.close()


async def _read(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    settings: Settings,
    topics: list[str] | None,
    waiting: bool,
) -> list[PartitionLag]:
    topics = topics or list(settings.input_topics)
    committed = await _committed(admin, settings.group_id)
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
    ]
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.beginning_offsets(partitions)
    rows = []
    try:
        for tp in partitions:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            row = PartitionLag(tp.topic, tp.partition, offset, ends[tp], starts[tp])
            if waiting and row.lag > 0:
                row = await _with_wait(consumer, tp, row)
            rows.append(row)
    finally:
        # A kept consumer must not go on fetching the last partition it peeked at.
        consumer.unsubscribe()
    return rows


async def _with_wait(
    consumer: AIOKafkaConsumer, tp: TopicPartition, row: PartitionLag
) -> PartitionLag:
    first = max(row.committed or 0, row.start)
    consumer.assign([tp])
    consumer.seek(tp, first)
    batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
    records = batch.get(tp, [])
    if not records:
        return row
    waited = max(0.0, time.time() - records[0].timestamp / 1000)
    return PartitionLag(row.topic, row.partition, row.committed, row.end, row.start, waited)


async def _committed(admin: AIOKafkaAdminClient, group_id: str) -> dict[TopicPartition, Any]:
    # Right after a broker (re)start the coordinator may not be elected yet.
    for attempt in range(40):
        try:
            result: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(group_id)
            return result
        except CoordinatorNotAvailableError:
            if attempt == 39:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def wait_caught_up(settings: Settings, timeout_s: float = 120.0) -> None:
    """Wait until the consumer group has committed every input record."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        rows = await group_lag(settings)
        if rows and all(r.lag == 0 for r in rows):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(
                f"consumer group {settings.group_id} still behind after {timeout_s}s"
            )
        await asyncio.sleep(0.2)


async def rewind_group(settings: Settings, topics: list[str] | None = None) -> None:
    """Commit offset 0 on every partition (the group must have no live members)."""
    topics = topics or list(settings.input_topics)
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions(consumer, topic))
        ]
    finally:
        await consumer.stop()
    await commit_group_offsets(settings, settings.group_id, dict.fromkeys(partitions, 0))
