"""Identity stitching on real Kafka + Redis, single and Cluster (issue #16).

A simulated population browses under cookies for weeks, logs in, pays in
store with a loyalty card registered later; a few links join a customer to
a guest's cookie by mistake and are undone. Events keyed by the identifier
they carry, links and unlinks shuffled with duplicates, published in chunks
through a worker killed with SIGKILL halfway. Every person's profile (read by
any of their identifiers) must equal a fold of the events of their
identifiers, and identity-changes must hold each change once, ending in the
true people.

A mock would not catch what this does: the links stored per node across
cluster slots and read back around each pair, a person's parts read from
different slots and merged, and the control consumer redelivering the links
the dead worker had not committed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from patronage.models.batch import Record
from patronage.models.profile import fold
from patronage.models.simulate import generate, stitched
from patronage.streams.identities import Resolver
from patronage.streams.lag import group_lag
from patronage.streams.memory import stored_fields
from patronage.streams.settings import Settings
from patronage.streams.store import ProfileStore, make_redis
from tests.integration.harness import (
    Worker,
    drained,
    erase_by_cli,
    on_cluster,
    read_topic,
    redis_client,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import publish_with_metadata
from tests.integration.test_reliability import record
from tests.unit.test_pipeline import KIND_TOPIC
from tests.unit.test_stitching import (
    assert_changes_end_in_the_true_people,
    assert_fields_close,
    event_deltas,
    profile_key,
)

DAY_MS = 86_400_000


def links_drained(settings: Settings) -> bool:
    control = settings.model_copy(update={"group_id": settings.control_group_id})
    rows = asyncio.run(group_lag(control, [settings.topic(settings.topic_identities)]))
    return all(r.lag == 0 for r in rows)


async def views(
    env: dict[str, str], settings: Settings, person_of: dict[str, str]
) -> dict[str, Any]:
    """Every identifier's answer: (canonical id, merged fields, identifiers)."""
    client = make_redis(env["PATRONAGE_REDIS_URL"], cluster=settings.redis_cluster)
    store = ProfileStore(client, settings.key_prefix, settings.profile_config)
    resolver = Resolver(store, settings.profile_config, 0)
    try:
        return {key: await resolver.view(key) for key in person_of}
    finally:
        await client.aclose()


def erase_a_person(
    env: dict[str, str], settings: Settings, worker: Worker, person_of: dict[str, str]
) -> str:
    """Erase a customer with a cookie and a card: every key of all three goes."""
    groups: dict[str, list[str]] = {}
    for key, person in person_of.items():
        groups.setdefault(person, []).append(key)
    victim = min(c for c, members in groups.items() if len(members) == 3)
    assert erase_by_cli(env, victim)["keys_removed"] >= 6
    client = redis_client(env)
    for key in groups[victim]:
        assert list(client.scan_iter(match=f"{settings.key_prefix}:{{{key}}}:*")) == [], key
        assert worker.http(f"/profiles/{key}")[0] == 404
    return victim


def test_people_equal_their_events_across_shuffled_links_and_a_kill(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    env = backend_env
    settings = settings_with_topics(env)
    start = int(time.time() * 1000) - 140 * DAY_MS
    events, _ = generate(customers=150, days=120, seed=11, start_ms=start)
    world = stitched(events, seed=11)
    rng = random.Random(11)
    links = [
        ("identities", link["customer_id"], json.dumps(link).encode()) for link in world.identities
    ]
    deliveries = links + rng.sample(links, len(links) // 3)
    rng.shuffle(deliveries)
    rows = [(KIND_TOPIC[e["type"]], profile_key(e), json.dumps(e).encode()) for e in world.events]
    chunks = 4
    records: list[Record] = []
    worker = Worker(env, name="stitch-1").start()
    faults = []
    try:
        for n in range(chunks):
            part = rows[n * len(rows) // chunks : (n + 1) * len(rows) // chunks]
            metadata = publish_with_metadata(settings, part)
            for (_, key, value), (topic, partition, offset) in zip(part, metadata, strict=True):
                records.append(Record(topic, partition, offset, key.encode(), value))
            publish_with_metadata(
                settings,
                deliveries[n * len(deliveries) // chunks : (n + 1) * len(deliveries) // chunks],
            )
            if n == chunks // 2:
                worker.kill()  # mid-stream, no goodbye
                worker = Worker(env, name="stitch-2").start()
                faults.append(f"kill after chunk {n}")
            wait_for(lambda: drained(settings), 120, f"chunk {n}", worker.check_alive)
        wait_for(lambda: links_drained(settings), 120, "links", worker.check_alive)
        found = asyncio.run(views(env, settings, world.person_of))
        erased = erase_a_person(env, settings, worker, world.person_of)
    finally:
        worker.stop()

    deltas = event_deltas(records, settings, int(time.time() * 1000))
    groups: dict[str, set[str]] = {}
    for key, person in world.person_of.items():
        groups.setdefault(person, set()).add(key)

    people = 0
    for canonical, members in groups.items():
        if canonical == erased:
            continue  # checked gone above
        ordered = sorted(pair for m in members for pair in deltas.get(m, []))
        if not ordered:
            assert all(found[k] is None for k in members)
            continue
        people += 1
        expected = stored_fields(fold([d for _, d in ordered], settings.profile_config))
        for key in members:
            got = found[key]
            assert got is not None, key
            assert got[0] == canonical and sorted(got[2]) == sorted(members), key
            assert_fields_close(got[1], expected)

    changes = [
        json.loads(r.value) for r in read_topic(settings, settings.topic("identity-changes"))
    ]
    by_id: dict[str, dict[str, Any]] = {}
    for change in changes:
        assert by_id.setdefault(change["event_id"], change) == change  # one content per id
    assert_changes_end_in_the_true_people(changes, world.person_of)
    merged = sum(len(m) > 1 for m in groups.values())
    assert len({c["customer_id"] for c in by_id.values() if c["kind"] == "merge"}) >= merged
    record(
        "identity stitching, shuffled links, kill -9" + on_cluster(env),
        people=people,
        linked_people=merged,
        link_events=len(links),
        deliveries=len(deliveries),
        wrong_links_undone=len(world.wrong),
        identity_change_messages=len(changes),
        distinct_identity_changes=len(by_id),
        faults=faults,
    )
