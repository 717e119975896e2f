"""The latency benchmark's two load producers, one contract: every event
reaches the partition the Java client (and aiokafka, and the worker's own
tests) would put its key on, and each probe's ack time lies between its send
and the end of the flush.

A real broker: a mock would accept any partition and any ack time, and
librdkafka's default partitioner (CRC32) would then have gone unnoticed —
the same customer's events on another partition than the other harness put
them, its ack times measured by when the report was served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from benchmarks.bench import LOAD_PRODUCERS, _cleanup
from tests.integration.harness import read_topic, settings_with_topics


@pytest.mark.parametrize("load", sorted(LOAD_PRODUCERS))
def test_a_load_producer_keys_like_the_java_client_and_times_its_acks(
    load: str, isolated_env: dict[str, str]
) -> None:
    settings = settings_with_topics(isolated_env)
    topic = settings.topic_for_kind["click"]
    keys = [f"c{n:06d}".encode() for n in range(200)]
    acks: dict[bytes, float] = {}
    sent: dict[bytes, float] = {}

    async def offer() -> float:
        producer = LOAD_PRODUCERS[load](settings)
        await producer.start()
        try:
            for key in keys:
                sent[key] = time.perf_counter()
                await producer.send(topic, b"{}", key, lambda t, key=key: acks.__setitem__(key, t))
            await producer.flush()
            return time.perf_counter()
        finally:
            await producer.stop()

    flushed = asyncio.run(offer())
    assert set(acks) == set(keys)
    assert all(sent[k] <= acks[k] <= flushed for k in keys)

    partitions = list(range(settings.partitions))
    expected = {k: DefaultPartitioner()(k, partitions, partitions) for k in keys}
    records = read_topic(settings, topic)
    assert {r.key: r.partition for r in records} == expected
    assert len({r.partition for r in records}) == settings.partitions  # spread, not one


def test_a_run_leaves_no_data_directory(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """Every benchmark run gave its worker a data directory under /tmp and
    left it there (39 of them on a developer's machine after a day)."""
    data_dir = tmp_path / "worker-data"
    (data_dir / "tables").mkdir(parents=True)
    (data_dir / "tables" / "state").write_bytes(b"x")
    settings = settings_with_topics({**isolated_env, "PATRONAGE_DATA_DIR": str(data_dir)})
    asyncio.run(_cleanup(settings))
    assert not data_dir.exists()
