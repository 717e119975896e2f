"""Upgrading to the batch ingest path must not re-run retained erasure requests.

The control topics (segment features, erasure requests) used to be read in
the input group; the Faust agents now read them in a group of their own. A
fresh group starts at the earliest offset, which would erase again every
customer who came back after an erasure. A mock admin client would not show
what the broker keeps per group — this runs against the real Kafka.
"""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from patronage.streams.kafka_admin import carry_control_offsets, commit_group_offsets
from patronage.streams.settings import Settings
from tests.integration.harness import settings_with_topics


async def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): m.offset for tp, m in offsets.items() if m.offset >= 0}


def test_control_offsets_carry_over_once(isolated_env: dict[str, str]) -> None:
    settings = settings_with_topics(isolated_env)
    erasure = settings.topic(settings.topic_erasure_requests)
    clicks = settings.topic(settings.topic_clicks)
    old = {TopicPartition(erasure, 0): 7, TopicPartition(erasure, 3): 2}
    asyncio.run(
        commit_group_offsets(settings, settings.group_id, {**old, TopicPartition(clicks, 0): 40})
    )

    carried = asyncio.run(carry_control_offsets(settings))

    assert carried == {f"{erasure}-0": 7, f"{erasure}-3": 2}
    # Only the control topics: the input offsets stay with the input group.
    assert asyncio.run(_committed(settings, settings.control_group_id)) == {
        (erasure, 0): 7,
        (erasure, 3): 2,
    }
    # Once: after that the control group's own progress is what counts.
    asyncio.run(
        commit_group_offsets(settings, settings.control_group_id, {TopicPartition(erasure, 0): 9})
    )
    assert asyncio.run(carry_control_offsets(settings)) == {}
    assert asyncio.run(_committed(settings, settings.control_group_id))[(erasure, 0)] == 9
