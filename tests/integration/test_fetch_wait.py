"""An idle worker does not poll the broker; a flowing stream is gathered.

The input consumer's fetches wait `fetch_wait_ms` for records to gather
while they flow; held that way while nothing arrives, every fetch came back
empty after 5 ms, and an idle worker took 0.15 of a core, the broker 0.12
(docs/benchmarks.md). `FetchGather` sets the wait from what the fetches
bring. What a fetch costs and how long the broker holds it are the
broker's doing: a mock consumer would show the attributes set, not the
requests sent or the record answered at once — this counts the fetch
requests the real client sends to the real Kafka.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from patronage.streams.fetching import FetchGather
from patronage.streams.ingest import input_consumer
from patronage.streams.settings import Settings
from tests.integration.harness import settings_with_topics


async def _scenario(settings: Settings) -> dict[str, float]:
    topic = settings.topic(settings.topic_clicks)
    consumer = input_consumer(settings)
    await consumer.start()
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all")  # type: ignore[arg-type]
    await producer.start()
    fetches = 0
    send = consumer._client.send

    async def counted(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal fetches
        if type(request).__name__.startswith("FetchRequest"):
            fetches += 1
        return await send(node_id, request, *args, **kwargs)

    consumer._client.send = counted
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        await consumer.seek_to_end()
        gather = FetchGather(consumer, settings.fetch_wait_ms)

        async def fetches_in(seconds: float) -> float:
            before = fetches
            await asyncio.sleep(seconds)
            return (fetches - before) / seconds

        await asyncio.sleep(1.0)  # started, positions known
        gathering = await fetches_in(1.0)
        gather.after(0)  # a fetch that brought nothing
        await asyncio.sleep(0.7)  # the fetch in flight was made gathering
        idle = await fetches_in(2.0)
        # The first record after a quiet spell: answered when it arrives,
        # not after the idle wait.
        await (await producer.send(topic, b'{"probe": 1}', key=b"c1", partition=0))
        acked = time.monotonic()
        got: dict[Any, list[Any]] = {}
        while not got and time.monotonic() - acked < 5:
            got = await consumer.getmany(timeout_ms=50)
        seen_after = time.monotonic() - acked
        gather.after(sum(len(r) for r in got.values()))  # one record: still idle
        still_idle = gather.current
        gather.after(3)
        return {
            "gathering": gathering,
            "idle": idle,
            "seen_after_s": seen_after,
            "records": sum(len(r) for r in got.values()),
            "still_idle_wait": still_idle[0] if still_idle else -1,
            "flowing_wait": gather.current[0] if gather.current else -1,
        }
    finally:
        await producer.stop()
        await consumer.stop()


def test_an_idle_consumer_stops_polling_and_still_gets_the_next_record_at_once(
    isolated_env: dict[str, str],
) -> None:
    settings = settings_with_topics({**isolated_env, "PATRONAGE_FETCH_WAIT_MS": "5"})
    result = asyncio.run(_scenario(settings))
    # 5 ms waits: a fetch every few ms; the idle wait (500 ms): two a second.
    assert result["gathering"] > 40, result
    assert result["idle"] <= 4, result
    assert result["records"] == 1, result
    assert result["seen_after_s"] < 0.4, result  # not held for the 500 ms wait
    assert result["still_idle_wait"] == 500, result
    assert result["flowing_wait"] == 5, result
