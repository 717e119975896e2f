"""Kafka administration the CLI, the tests and the benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from patronage.streams.settings import Settings


async def create_topics(settings: Settings) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.input_topics, *settings.output_topics]
        # One partition: exactly one worker in the group learns, one applies
        # identity links in their order, and identity changes keep that
        # order for whoever rebuilds the map from them.
        single = {
            settings.topic(settings.topic_segment_features),
            settings.topic(settings.topic_identities),
            settings.topic(settings.topic_identity_changes),
        }
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another process may create them at the same moment; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            1 if t in single else settings.partitions,
                            settings.replication_factor,
                        )
                        for t in missing
                    ]
                )
        print(f"topics ready ({len(missing)} created): {', '.join(wanted)}")
        await wait_for_group_coordinator(admin, settings.group_id)
        return missing
    finally:
        await admin.close()


async def wait_for_group_coordinator(admin: Any, group_id: str, timeout_s: float = 60) -> None:
    """A new broker creates __consumer_offsets on the first group request and
    answers "coordinator not available" until it exists: wait it out here so
    "services up" means a broker that can serve consumer groups."""

    from aiokafka.errors import CoordinatorNotAvailableError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await admin.list_consumer_group_offsets(group_id)
            return
        except CoordinatorNotAvailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def carry_control_offsets(settings: Settings) -> dict[str, int]:
    """Once, on upgrade: the control topics (segment features, erasure
    requests) used to be read by the input group. Their consumer now has a
    group of its own; starting it from the earliest offset would apply every
    retained erasure request again — erasing customers who came back since.
    Copies the input group's committed offsets when the control group has none."""
    from aiokafka.admin import AIOKafkaAdminClient

    topics = set(settings.control_topics)
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        current = await admin.list_consumer_group_offsets(settings.control_group_id)
        if any(tp.topic in topics and meta.offset >= 0 for tp, meta in current.items()):
            return {}
        old = await admin.list_consumer_group_offsets(settings.group_id)
        carried = {tp: m.offset for tp, m in old.items() if tp.topic in topics and m.offset >= 0}
    finally:
        await admin.close()
    if not carried:
        return {}
    await commit_group_offsets(settings, settings.control_group_id, carried)
    return {f"{tp.topic}-{tp.partition}": offset for tp, offset in carried.items()}


async def commit_group_offsets(settings: Settings, group_id: str, offsets: dict[Any, int]) -> None:
    """Commit `offsets` ({TopicPartition: next offset}) for a group with no live members."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        **settings.kafka_client_kwargs(), group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def delete_run_topics(settings: Settings) -> list[str]:
    """Delete the topics of one test or benchmark run: those named with its
    topic prefix, and internal ones named after its group (Quix changelogs).
    A broker keeps every partition's files open; left behind, thousands of
    runs' topics exhaust its file descriptors."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a run-specific topic prefix")
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        names = [
            t
            for t in await admin.list_topics()
            if t.startswith(settings.topic_prefix) or settings.group_id in t
        ]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()
