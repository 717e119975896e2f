"""The learner's vectors gather in the worker and go out together: once
they have waited `segment_features_interval_s`, once they fill a message,
and whenever the input is idle. A message a batch cost ~30 % of a live
worker's CPU at 1k events/s (docs/benchmarks.md). An erased customer's
vectors still gathering never go out after the forget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from patronage.models.batch import Record
from patronage.models.simulate import generate
from patronage.streams.memory import (
    MemoryModelStore,
    MemoryProfileStore,
    RecordingProducer,
    StaticLog,
)
from patronage.streams.pipeline import Pipeline
from patronage.streams.segmenting import FEATURE_BATCH
from patronage.streams.settings import Settings
from tests.unit.test_pipeline import START_MS, as_records

INTERVAL_S = 10.0


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def setup(**settings: Any) -> tuple[Pipeline, RecordingProducer, Clock, list[list[Any]]]:
    config = Settings(**{"segment_features_interval_s": INTERVAL_S, **settings})
    events, _ = generate(customers=100, days=30, seed=11, start_ms=START_MS)
    records = as_records(events, 1)
    clock = Clock(START_MS / 1000 + 31 * 86_400)
    producer = RecordingProducer()
    pipe = Pipeline(
        config,
        MemoryProfileStore(config.profile_config),
        MemoryModelStore(),
        producer,
        clock=clock,
    )
    batches = [records[i : i + 20] for i in range(0, len(records), 20)]
    return pipe, producer, clock, batches


def sent(producer: RecordingProducer) -> list[dict[str, Any]]:
    return producer.on("segment-features")


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for m in messages for v in m.get("vectors", [])]


def test_vectors_gather_for_the_interval_then_go_out_in_order() -> None:
    pipe, producer, clock, batches = setup()
    every_batch, _, _, _ = setup(segment_features_interval_s=0)

    async def run() -> None:
        for batch in batches[:3]:
            await pipe.process(batch, StaticLog())
            await every_batch.process(batch, StaticLog())
            clock.now_s += 1
        assert sent(producer) == []  # 3 s of the 10 gathered
        clock.now_s += INTERVAL_S
        await pipe.process(batches[3], StaticLog())
        await every_batch.process(batches[3], StaticLog())

    asyncio.run(run())
    messages = sent(producer)
    assert len(messages) == 1
    one_each = sent(every_batch.producer)  # type: ignore[arg-type]
    assert len(one_each) == 4
    # The same vectors, in the same order, in one message instead of four.
    assert ids(messages) == ids(one_each) and len(ids(messages)) > 4


def test_an_idle_input_sends_what_gathered() -> None:
    pipe, producer, _, batches = setup()

    async def run() -> None:
        await pipe.process(batches[0], StaticLog())
        assert sent(producer) == []
        await pipe.flush_features()
        assert len(sent(producer)) == 1
        await pipe.flush_features()  # nothing more to send

    asyncio.run(run())
    assert len(sent(producer)) == 1 and ids(sent(producer))


def test_a_full_message_goes_out_without_waiting() -> None:
    pipe, producer, _, batches = setup()
    every_batch, _, _, _ = setup(segment_features_interval_s=0)

    async def run() -> None:
        for batch in batches:
            await pipe.process(batch, StaticLog())
            await every_batch.process(batch, StaticLog())

    asyncio.run(run())
    messages = sent(producer)
    assert messages, "vectors past a message's worth were held"
    assert len(messages[0]["vectors"]) == FEATURE_BATCH
    # Nothing lost, nothing twice: what went out and what still gathers.
    every = ids(sent(every_batch.producer))  # type: ignore[arg-type]
    assert ids(messages) + [v["id"] for v in pipe._vectors] == every


def test_an_erased_customers_gathering_vectors_never_follow_the_forget() -> None:
    pipe, producer, _, batches = setup()

    async def run() -> str:
        await pipe.process(batches[0], StaticLog())
        erased = pipe._vectors[0]["id"]
        request = {"customer_id": erased, "request_id": "r-1"}
        await pipe.erase(Record("erasure-requests", 0, 0, None, json.dumps(request).encode()))
        await pipe.flush_features()
        return erased

    erased = asyncio.run(run())
    messages = sent(producer)
    forget_at = next(i for i, m in enumerate(messages) if "forget" in m)
    assert erased in messages[forget_at]["forget"]
    after = ids(messages[forget_at + 1 :])
    assert after, "the other customers' vectors were lost"
    assert erased not in after


def test_the_ingest_loop_sends_them_when_a_fetch_comes_back_empty() -> None:
    from aiokafka import TopicPartition

    from patronage.streams.ingest import BatchIngest
    from tests.unit.test_preparing import ListConsumer

    pipe, producer, _, batches = setup()
    partitions = {TopicPartition(t, 0) for t in pipe.settings.input_topics}
    consumer = ListConsumer([list(batches[0])], partitions)
    ingest = BatchIngest(pipe.settings, pipe)

    async def run() -> None:
        await ingest._fetch_and_process(consumer, 0, [])  # type: ignore[arg-type]
        assert sent(producer) == []  # a batch, within the interval
        await ingest._fetch_and_process(consumer, 0, [])  # type: ignore[arg-type]

    asyncio.run(run())
    assert len(sent(producer)) == 1 and ids(sent(producer))
