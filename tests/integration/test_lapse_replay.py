"""Lapse alerts on a replayed history (event clock), real Kafka + Redis.

Replays a generated history in time order through a real worker, kills it
with SIGKILL halfway and starts a new one, then compares the alerts on the
lapse-alerts topic with the alerts computed independently from the events.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis

from patronage.models.simulate import generate
from patronage.streams.settings import Settings
from tests.integration.harness import (
    Worker,
    drained,
    on_cluster,
    read_topic,
    redis_client,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import (
    TYPE_TOPIC,
    assert_profiles_match,
    export,
    publish_with_metadata,
    recompute,
)
from tests.integration.test_reliability import record

DAY_MS = 86_400_000
CHUNK_DAYS = 2
LATENESS_S = 3 * 86_400  # more than one chunk: every in-flight event lands first


def expected_alerts(
    events: list[dict[str, Any]], partition_of: dict[str, int], lateness_s: float = LATENESS_S
) -> dict[tuple[str, str, int], int]:
    """(customer, kind, episode) -> alert time, from the definitions."""
    by_customer: dict[str, list[int]] = defaultdict(list)
    watermark: dict[int, int] = defaultdict(int)
    for e in events:
        if e["type"] == "customer_attributes":
            continue
        by_customer[e["customer_id"]].append(e["ts"])
        p = partition_of[e["customer_id"]]
        watermark[p] = max(watermark[p], e["ts"])

    def moment(days: set[int], first: int, last: int) -> float | None:
        if len(days) < 6:
            return None
        usual_gap = (max(days) - min(days)) / (len(days) - 1)
        return max(last + max(14.0, 3 * usual_gap) * DAY_MS, first + 90.0 * DAY_MS)

    alerts: dict[tuple[str, str, int], int] = {}
    for customer, times in by_customer.items():
        days: set[int] = set()
        first = last = None
        for t in sorted(times):
            if last is not None and t > last:
                m = moment(days, first, last)  # type: ignore[arg-type]
                if m is not None and t > m:
                    alerts[(customer, "lapsed", last)] = int(m)
                    alerts[(customer, "reactivated", last)] = t
            days.add(t // DAY_MS)
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
        now = watermark[partition_of[customer]] - lateness_s * 1000
        m = moment(days, first, last)  # type: ignore[arg-type]
        if m is not None and now > m:
            alerts[(customer, "lapsed", last)] = int(m)  # type: ignore[index]
    return alerts


def history(seed: int, days: int = 200) -> tuple[int, list[dict[str, Any]]]:
    """(start, events): 160 customers over `days` days, a third of them
    lapsing; it ends before today (a history running into later today would
    be "in the future")."""
    start_ms = (int(time.time() * 1000) // DAY_MS - days - 1) * DAY_MS
    events, _ = generate(customers=160, days=days, seed=seed, start_ms=start_ms, lapse_share=0.35)
    return start_ms, events


def parse(ts: str) -> int:
    return int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def sweeps_done(
    settings: Settings,
    client: redis.Redis,
    partitions: set[int],
    lateness_s: float = LATENESS_S,
    queue: str = "due",
) -> bool:
    """Every partition's `queue` (lapse: due; at-risk: risk) swept up to the
    final clock, and (lapse) no alert waiting in an outbox."""
    prefix = settings.key_prefix
    for p in partitions:
        marks = client.hgetall(f"{prefix}:{{lapse-{p}}}:clock")
        newest = [float(v) for k, v in marks.items() if k.startswith(b"hw:")]
        if not newest:
            return False
        # Once every topic is idle, the clock is the newest event time seen.
        horizon = max(newest) - lateness_s * 1000
        if client.zcount(f"{prefix}:{{lapse-{p}}}:{queue}", "-inf", horizon) > 0:
            return False
    if queue != "due":
        return True
    return not any(True for _ in client.scan_iter(match=f"{prefix}:*:x", count=1000))


def replay_env(env: dict[str, str], lateness_s: float) -> dict[str, str]:
    """A history replayed in paced chunks on the event clock, swept often."""
    return {
        **env,
        "PATRONAGE_LAPSE_CLOCK": "event",
        "PATRONAGE_LAPSE_EVENT_LATENESS_S": str(lateness_s),
        "PATRONAGE_LAPSE_SWEEP_INTERVAL_S": "0.3",
        # Chunks are paced: between them every topic is quiet alike.
        "PATRONAGE_LAPSE_INPUT_IDLE_S": "2",
        "PATRONAGE_COMMIT_INTERVAL_S": "0.2",
        "PATRONAGE_SESSION_TIMEOUT_S": "6",
        # Every batch through the prepare process: kills and rebalances land
        # while a batch is prepared ahead of the one being finished.
        "PATRONAGE_PREPARE_PROCESS_MIN_RECORDS": "1",
    }


@pytest.mark.parametrize("scenario", ["kill -9 mid-replay", "rebalance 1-2-1"])
def test_replayed_history_gives_the_alerts_history_would_have(
    backend_env: dict[str, str], scenario: str, tmp_path: Path
) -> None:
    env = replay_env(backend_env, LATENESS_S)
    settings = settings_with_topics(env)
    days = 200
    start_ms, events = history(seed=5, days=days)
    chunks: list[list[tuple[str, str | None, bytes]]] = [[] for _ in range(days // CHUNK_DAYS + 1)]
    for e in events:
        index = (e["ts"] - start_ms) // (CHUNK_DAYS * DAY_MS)
        chunks[index].append((TYPE_TOPIC[e["type"]], e["customer_id"], json.dumps(e).encode()))

    partition_of: dict[str, int] = {}
    client = redis_client(env)
    workers = [Worker(env, name="lapse-1").start()]
    faults = []
    try:
        for number, chunk in enumerate(chunks):
            if not chunk:
                continue
            metadata = publish_with_metadata(settings, chunk)
            for (_, customer, _), (_, partition, _) in zip(chunk, metadata, strict=True):
                partition_of[customer or ""] = partition
            if scenario.startswith("kill") and number == len(chunks) // 2:
                workers[0].kill()  # mid-replay, no goodbye
                workers[0] = Worker(env, name="lapse-2").start()
                faults.append(f"kill at chunk {number}")
            if scenario.startswith("rebalance") and number == len(chunks) // 3:
                workers.append(Worker(env, name="lapse-second").start())
                faults.append(f"second worker joins at chunk {number}")
            if scenario.startswith("rebalance") and number == 2 * len(chunks) // 3:
                workers.pop(0).stop()  # the first leaves; its partitions move
                faults.append(f"first worker leaves at chunk {number}")
            wait_for(
                lambda: drained(settings), 120, f"chunk {number} to drain", workers[0].check_alive
            )
        wait_for(
            lambda: sweeps_done(settings, client, set(partition_of.values())),
            60,
            "final sweeps",
            workers[0].check_alive,
        )
    finally:
        for worker in workers:
            worker.stop()
    assert len(faults) == (1 if scenario.startswith("kill") else 2)
    # Handing partitions over (or crashing) must not lose or double any event.
    assert_profiles_match(export(env, tmp_path / "after-replay.jsonl"), recompute(events))

    expected = expected_alerts(events, partition_of)
    kinds = {k[1] for k in expected}
    assert kinds == {"lapsed", "reactivated"}, "the history must contain both kinds"

    records = read_topic(settings, settings.topic("lapse-alerts"))
    alerts = [json.loads(r.value) for r in records]
    by_id: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        by_id.setdefault(alert["event_id"], alert)
    actual = {
        (a["customer_id"], a["kind"], parse(a["last_seen"])): parse(a["ts"]) for a in by_id.values()
    }
    assert set(actual) == set(expected)
    for key, when in expected.items():
        # Reactivation: the first activity after the gap, whichever topic it
        # came on (the judge waits until the clock has passed it).
        assert actual[key] == when, key
    assert all(
        a["event_id"] == f"lapse:{a['customer_id']}:{a['kind']}:{parse(a['last_seen'])}"
        for a in alerts
    )
    record(
        f"lapse alerts, {scenario}" + on_cluster(env),
        events=len(events),
        faults=faults,
        expected_alerts=len(expected),
        distinct_alert_ids=len(by_id),
        alert_messages=len(alerts),
    )


@pytest.mark.parametrize("held_back", [None, "store-receipts"], ids=["one backlog", "held back"])
def test_unpaced_backlog_gives_the_alerts_history_would_have(
    isolated_env: dict[str, str], held_back: str | None, tmp_path: Path
) -> None:
    """A whole history published at once, as after a day of downtime, and
    drained as fast as the worker can: the topics drain at their own speed
    (one of them, in the second case, is only published a minute later), so
    a visit on a fast topic is applied long before the slower topics' visits
    of the same weeks. The event clock (the slowest topic) must keep every
    gap undecided until all of them are in: no false `lapsed`, none missed,
    the exact moments, and each alert id once.

    The held-back topic must reach the worker while the partitions are
    young (`PATRONAGE_LAPSE_INPUT_IDLE_S` of their first batch: a topic that
    never delivered stops holding the clock after that), or the case is not
    the one tested (published 95 s late: 40 false alerts and 10 missed). It
    is published 30 s after the others began, leaving 60 s for publishing
    and fetching it, and a run too slow for that fails saying so."""
    idle_s = 90 if held_back else 5
    held_back_s = 30
    env = {
        **isolated_env,
        "PATRONAGE_LAPSE_CLOCK": "event",
        "PATRONAGE_LAPSE_EVENT_LATENESS_S": "3600",
        "PATRONAGE_LAPSE_INPUT_IDLE_S": str(idle_s),
        "PATRONAGE_LAPSE_SWEEP_INTERVAL_S": "0.5",
        "PATRONAGE_COMMIT_INTERVAL_S": "0.5",
    }
    settings = settings_with_topics(env)
    _, events = history(seed=12)
    messages = [(TYPE_TOPIC[e["type"]], e["customer_id"], json.dumps(e).encode()) for e in events]
    first = [m for m in messages if m[0] != held_back]
    later = [m for m in messages if m[0] == held_back]
    client = redis_client(env)
    worker = Worker(env, name="backlog").start()
    partition_of: dict[str, int] = {}
    try:
        started = time.monotonic()
        metadata = publish_with_metadata(settings, first)
        if later:
            # The others drain meanwhile.
            time.sleep(max(0.0, held_back_s - (time.monotonic() - started)))
            metadata += publish_with_metadata(settings, later)
            published_s = time.monotonic() - started
            assert published_s < idle_s - 20, (
                f"the held-back topic took {published_s:.0f} s to publish: the clock "
                f"stops waiting for it after {idle_s} s, so this run cannot test the case"
            )
        for (_, customer, _), (_, partition, _) in zip(first + later, metadata, strict=True):
            partition_of[customer or ""] = partition
        wait_for(lambda: drained(settings), 240, "the backlog to drain", worker.check_alive)
        time.sleep(idle_s + 2)  # every topic idle: the clock reaches the newest event
        wait_for(
            lambda: sweeps_done(settings, client, set(partition_of.values()), 3600),
            120,
            "final sweeps",
            worker.check_alive,
        )
    finally:
        worker.stop()
    expected = expected_alerts(events, partition_of, lateness_s=3600)
    assert {k[1] for k in expected} == {"lapsed", "reactivated"}
    alerts = [json.loads(r.value) for r in read_topic(settings, settings.topic("lapse-alerts"))]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        by_id[alert["event_id"]].append(alert)
    assert all(all(a == copies[0] for a in copies) for copies in by_id.values()), "an id reused"
    actual = {
        (a["customer_id"], a["kind"], parse(a["last_seen"])): parse(a["ts"])
        for a in (copies[0] for copies in by_id.values())
    }
    false_alerts = set(actual) - set(expected)
    missed = set(expected) - set(actual)
    assert not false_alerts and not missed, (len(false_alerts), len(missed))
    assert actual == expected
    record(
        "lapse alerts, unpaced backlog"
        + (f", {held_back} held back {held_back_s} s" if held_back else ""),
        events=len(events),
        expected_alerts=len(expected),
        alert_ids=len(by_id),
        alert_messages=len(alerts),
        false_alerts=len(false_alerts),
        missed=len(missed),
    )
