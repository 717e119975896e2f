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
        single = settings.topic(settings.topic_segment_features)
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another process may create them at the same moment; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        # One partition: exactly one worker in the group learns.
                        NewTopic(
                            t,
                            1 if t == single else settings.partitions,
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
