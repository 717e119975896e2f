"""The modern-Python comparison for `bench throughput`: a Quix Streams job
keeping a per-customer aggregate of the same input topics in its RocksDB
state and writing it to Redis with Quix's RedisSink.

It runs in its own virtualenv (`make bench` creates `.venv-quix` with
quixstreams), reads the run's topics, group and Redis from the same
`PATRONAGE_*` variables as the worker, and imports nothing from patronage.

The aggregate is simpler than a patronage profile: events, orders (web
purchases and store receipts), spend in cents, first and last event time.
`QUIX_GUARANTEE` is `at-least-once` (Quix's default) or `exactly-once`.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlparse

from quixstreams import Application, State
from quixstreams.sinks.community.redis import RedisSink

INPUTS = ("clicks", "purchases", "store-receipts", "customer-attributes")
ORDER_TYPES = {"purchase", "store_receipt"}


def aggregate(event: dict[str, Any], state: State) -> dict[str, Any]:
    profile = state.get("profile") or {"events": 0, "orders": 0, "spend_cents": 0}
    ts = int(event.get("ts") or 0)
    profile["events"] += 1
    if event.get("type") in ORDER_TYPES:
        profile["orders"] += 1
        profile["spend_cents"] += round(float(event.get("total") or 0) * 100)
    profile["first_seen"] = min(profile.get("first_seen", ts), ts)
    profile["last_seen"] = max(profile.get("last_seen", ts), ts)
    state.set("profile", profile)
    return profile


def main() -> None:
    env = os.environ
    prefix = env.get("PATRONAGE_TOPIC_PREFIX", "")
    redis = urlparse(env.get("PATRONAGE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    app = Application(
        broker_address=env.get("PATRONAGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        consumer_group=env["PATRONAGE_GROUP_ID"],
        auto_offset_reset="earliest",
        commit_interval=float(env.get("PATRONAGE_COMMIT_INTERVAL_S", "1.0")),
        processing_guarantee=env.get("QUIX_GUARANTEE", "at-least-once"),  # type: ignore[arg-type]
        state_dir=env.get("PATRONAGE_DATA_DIR", "/tmp/quix-state"),
    )
    frames = [
        app.dataframe(app.topic(prefix + name, key_deserializer="str", value_deserializer="json"))
        for name in INPUTS
    ]
    sdf = frames[0]
    for frame in frames[1:]:
        sdf = sdf.concat(frame)
    sdf = sdf.apply(aggregate, stateful=True)
    key_prefix = env["PATRONAGE_KEY_PREFIX"]
    sdf.sink(
        RedisSink(
            host=redis.hostname or "127.0.0.1",
            port=redis.port or 6379,
            db=int((redis.path or "/0").lstrip("/") or 0),
            value_serializer=json.dumps,
            key_serializer=lambda key, value: f"{key_prefix}:quix:{key}",
        )
    )
    app.run()


if __name__ == "__main__":
    main()
