"""The ingest loop prepares the next batch while the previous one is in
Redis, and still finishes batches one at a time, in order, committing a
batch's offsets only once it is finished. In memory: the loop's bookkeeping,
not Kafka (the reliability tests kill workers mid-batch on real Kafka)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from patronage.models.batch import Record
from patronage.streams.ingest import BatchIngest
from patronage.streams.memory import MemoryModelStore, MemoryProfileStore, RecordingProducer
from patronage.streams.pipeline import Pipeline
from patronage.streams.settings import Settings

START_MS = 1_767_225_600_000  # 2026-01-01
TP = TopicPartition("clicks", 0)


class AssignedConsumer:
    """What `_begin` asks of the consumer: the assignment and log ends."""

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


def fetched(first: int, count: int) -> dict[TopicPartition, list[Any]]:
    clicks = [
        {
            "type": "click",
            "event_id": f"click-{offset}",
            "customer_id": "c-1138",
            "ts": START_MS + offset * 60_000,
            "session_id": "s-1",
            "page_type": "product",
        }
        for offset in range(first, first + count)
    ]
    return {
        TP: [
            SimpleNamespace(
                topic=TP.topic,
                partition=0,
                offset=first + i,
                key=b"c-1138",
                value=json.dumps(click).encode(),
            )
            for i, click in enumerate(clicks)
        ]
    }


def test_the_next_batch_is_prepared_while_the_previous_one_is_applied() -> None:
    settings = Settings(lapse_clock="wall")
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(
        settings,
        store,
        MemoryModelStore(),
        RecordingProducer(),
        clock=lambda: (START_MS + 86_400_000) / 1000,
    )
    ingest = BatchIngest(settings, pipe)
    consumer = AssignedConsumer()
    ingest.consumer = consumer  # type: ignore[assignment]
    steps: list[str] = []
    redis_free = asyncio.Event()
    prepare, apply = pipe.prepare, store.apply_batch

    async def recorded_prepare(records: list[Record], inputs: Any) -> Any:
        steps.append(f"prepare {records[0].offset}")
        return await prepare(records, inputs)

    async def held_apply(by_customer: Any, *args: Any, **kwargs: Any) -> Any:
        first = min(d.offset for deltas in by_customer.values() for d in deltas)
        steps.append(f"apply {first}")
        await redis_free.wait()
        return await apply(by_customer, *args, **kwargs)

    pipe.prepare = recorded_prepare  # type: ignore[method-assign]
    store.apply_batch = held_apply  # type: ignore[method-assign]

    async def run() -> None:
        # Returns with the first batch in flight (a sequential loop would
        # wait here until Redis is free: the timeout fails the test).
        await asyncio.wait_for(ingest._begin(consumer, fetched(0, 3)), 1.0)  # type: ignore[arg-type]
        second = asyncio.create_task(ingest._begin(consumer, fetched(3, 2)))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        # The second batch was prepared while the first was held in Redis,
        # and waits for it before it is applied; nothing is committable yet.
        assert steps == ["prepare 0", "apply 0", "prepare 3"]
        assert ingest.applied == {}
        assert not second.done()
        redis_free.set()
        await second
        await ingest.settle()
        assert steps == ["prepare 0", "apply 0", "prepare 3", "apply 3"]
        assert ingest.applied == {TP: 5}
        assert not pipe._batches_in_hand

    asyncio.run(run())
    fields = asyncio.run(store.fields_of(["c-1138"]))["c-1138"]
    assert int(fields["clicks"]) == 5
