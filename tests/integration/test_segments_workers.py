"""Segments with two real worker processes on one consumer group.

Both score with the same promoted model version; a restart keeps the model
(versions continue, ids stay); `model_update` changes are emitted only for
customers the promotion moved. Real Kafka and Redis: the single-partition
learner topic, the group assignment and the model in Redis are the point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from patronage.models.features import features
from patronage.models.layout import decode_profile
from patronage.models.segments import FrozenModel
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.memory import profile_as_text
from tests.integration.harness import (
    Worker,
    drained,
    metric_value,
    read_topic,
    redis_client,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import as_messages, publish_with_metadata


def worker_version(worker: Worker) -> int:
    status, body = worker.http("/metrics")
    if status != 200 or b"patronage_segment_model_version" not in body:
        return -1
    return int(metric_value(body, "patronage_segment_model_version"))


def model(client: redis.Redis, prefix: str, version: int) -> FrozenModel:
    return FrozenModel.from_json(json.loads(client.get(f"{prefix}:{{model}}:v{version}")))


def current_version(client: redis.Redis, prefix: str) -> int:
    value = client.get(f"{prefix}:{{model}}:version")
    return int(value) if value else 0


def profiles(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    out = {}
    for key in client.scan_iter(match=f"{prefix}:{{*}}:p", count=1000, _type="string"):
        name = key.decode()
        customer = name[len(prefix) + 2 : -3]
        if customer != "model":
            out[customer] = profile_as_text(decode_profile(client.get(key)))
    return out


def test_two_workers_one_model_stable_ids(backend_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **backend_env,
        "PATRONAGE_SEGMENTS": "4",
        "PATRONAGE_SEGMENT_WARMUP": "150",
        # Half of a 90-day history is enough here; every refit is promoted.
        "PATRONAGE_SEGMENT_WARMUP_DAYS": "20",
        "PATRONAGE_SEGMENT_PROMOTE_MIN_SHIFT": "0",
        "PATRONAGE_SEGMENT_PROMOTE_INTERVAL_S": "2",
        "PATRONAGE_SEGMENT_REFRESH_INTERVAL_S": "0.5",
        "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
        "PATRONAGE_SESSION_TIMEOUT_S": "6",
        "PATRONAGE_BATCH_MAX": "300",
        "PATRONAGE_SEGMENT_LEARN_SAMPLE": "1",
    }
    settings = settings_with_topics(env)
    prefix = settings.key_prefix
    client = redis_client(env)
    now_ms = int(time.time() * 1000)
    events, _ = generate(customers=300, days=90, seed=9, start_ms=(now_ms // DAY_MS - 91) * DAY_MS)
    half = len(events) // 2
    first, second = events[:half], events[half:]

    workers = [Worker(env, name="seg-a").start(), Worker(env, name="seg-b").start()]
    try:
        # The learner promotes at most once per interval, when vectors come:
        # the first half in two parts, the interval apart, gives two versions.
        for part, (start, end) in enumerate(((0, half * 2 // 3), (half * 2 // 3, half)), 1):
            publish_with_metadata(settings, as_messages(first[start:end]))
            wait_for(lambda: drained(settings), 120, "first half drained", workers[0].check_alive)
            wait_for(lambda p=part: current_version(client, prefix) >= p, 60, f"promotion {part}")
            time.sleep(2.5)
        time.sleep(3)  # the learner may promote once more on its interval
        version = current_version(client, prefix)
        wait_for(
            lambda: all(worker_version(w) == current_version(client, prefix) for w in workers),
            30,
            "both workers on the latest version",
        )
        version = current_version(client, prefix)
        before_restart = model(client, prefix, version)

        # Restart both, one after the other: the model and learner live in Redis.
        for i, name in enumerate(("seg-a2", "seg-b2")):
            workers[i].stop()
            workers[i] = Worker(env, name=name).start()
        publish_with_metadata(settings, as_messages(second))
        wait_for(lambda: drained(settings), 120, "second half drained", workers[0].check_alive)
        wait_for(lambda: current_version(client, prefix) > version, 60, "a promotion after restart")
        time.sleep(3)
        wait_for(
            lambda: all(worker_version(w) == current_version(client, prefix) for w in workers),
            30,
            "both workers on the latest version again",
        )
        # Let the last re-scoring passes finish.
        time.sleep(3)
    finally:
        for w in workers:
            w.stop()

    after = model(client, prefix, version + 1)
    # Versions continued from the checkpoint and segment ids stayed put.
    assert after.version == before_restart.version + 1
    current = profiles(client, prefix)
    xs = [features(f) for f in current.values()]
    agree = sum(before_restart.predict(x) == after.predict(x) for x in xs) / len(xs)
    # Ids that stayed put agree on most customers; how many depends on how
    # many vectors the first promotion after the restart learnt, which the
    # scheduler decides (0.85-0.97 seen over runs). Ids permuted by a restart
    # would agree on far fewer (at most ~0.5 with 4 segments).
    assert agree >= 0.8, agree

    published = read_topic(settings, settings.topic("segment-changes"))
    # The topic also carries value tier changes (the learner fits prediction
    # parameters on this history): consumers tell them apart by `kind`.
    changes = [c for c in map(json.loads, (r.value for r in published)) if c["kind"] == "segment"]
    assert changes, "segment changes were emitted"
    versions = {c["model_version"] for c in changes}
    assert versions <= set(range(1, current_version(client, prefix) + 1))
    updates = [c for c in changes if c["reason"] == "model_update"]
    checked = 0
    h = settings.segment_hysteresis
    for change in updates:
        fields = current[change["customer_id"]]
        # Only where the profile still is what the re-score saw: the change's
        # id carries the profile's event count then (`seg:{id}:{version}:{applied}`);
        # segment and version alone let through a profile whose features
        # moved on after the change without moving its segment.
        applied_then = int(change["event_id"].rsplit(":", 1)[1])
        if (
            int(float(fields["events_applied"])) != applied_then
            or int(fields["segment_version"]) != change["model_version"]
            or int(fields["segment"]) != change["segment"]
        ):
            continue
        x = features(fields)
        new_model = model(client, prefix, change["model_version"])
        prev = change["previous_segment"]
        assert new_model.assign(x, prev, h) == change["segment"]
        checked += 1
    print(f"{len(changes)} changes, {len(updates)} model_update, {checked} re-checked")
    print(f"agreement across the restart: {agree:.3f}")
