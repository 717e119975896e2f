"""The naive baseline for the benchmark: a plain Faust agent that handles one
event at a time and makes one Redis round trip per event (same validation,
same Lua script). `python -m benchmarks.bench` runs it beside the real worker.

    python -m benchmarks.bench_naive   (settings from PATRONAGE_* as usual)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import faust

from patronage.models.batch import Record, prepare_batch
from patronage.streams.settings import load_settings
from patronage.streams.store import ProfileStore, redis_for


def main() -> None:
    settings = load_settings()
    app = faust.App(
        settings.group_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        # The benchmark times the drain by committed offsets (as for the worker).
        broker_commit_interval=settings.commit_interval_s,
        datadir=settings.data_dir,
    )
    source = app.topic(
        *settings.input_topics, key_serializer="raw", value_serializer="raw", allow_empty=True
    )
    state: dict[str, Any] = {}

    @app.agent(source)
    async def naive(stream: Any) -> None:
        if "store" not in state:
            state["store"] = ProfileStore(
                redis_for(settings), settings.key_prefix, settings.profile_config
            )
        store: ProfileStore = state["store"]
        async for event in stream.events():
            m = event.message
            now_ms = int(time.time() * 1000)
            batch = prepare_batch(
                [Record(m.topic, m.partition, m.offset, m.key, m.value)],
                settings.input_topics,
                settings.rules,
                now_ms,
                settings.zone,
            )
            await store.apply_batch(
                batch.by_customer, batch.partition_of, marks=batch.newest, wall_ms=now_ms
            )

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main()
