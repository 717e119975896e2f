"""Crashes and hostile input on the real services.

A mock would not show any of this: what is tested is Kafka redelivering
uncommitted records to a new process after SIGKILL, and Redis's atomic
script refusing to count them twice.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patronage.models.batch import Record, prepare_batch
from patronage.models.simulate import generate
from patronage.models.validate import Rejected, Rules, validate
from tests.integration.harness import (
    Worker,
    cli_lag,
    drained,
    metric_sum,
    on_cluster,
    read_topic,
    settings_with_topics,
    wait_for,
)
from tests.integration.private_redis import PrivateRedis
from tests.integration.redis_cluster import RedisCluster3, require_redis_server
from tests.integration.test_end_to_end import (
    DAY_MS,
    assert_profiles_match,
    bad_messages,
    build_stream,
    export,
    publish_with_metadata,
    recompute,
)
from tests.schema_fuzz import KINDS, TOPIC_OF, mutate, schema_corpus

RESULTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability.jsonl"


def record(name: str, **figures: Any) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps({"test": name, **figures}) + "\n")


def test_kill_9_mid_stream_loses_and_doubles_nothing(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """On a cluster a batch is one pipeline per master: a kill between them
    leaves it half applied, and the redelivery must finish it, not double it.
    Every batch goes through the prepare process, so a kill also lands while
    one batch is finished and the next is prepared ahead (never committed)."""
    env = {
        **backend_env,
        "PATRONAGE_COMMIT_INTERVAL_S": "0.5",
        "PATRONAGE_SESSION_TIMEOUT_S": "6",
        "PATRONAGE_BATCH_MAX": "500",
        "PATRONAGE_PREPARE_PROCESS_MIN_RECORDS": "1",
    }
    settings = settings_with_topics(env)
    now_ms = int(time.time() * 1000)
    good, stream = build_stream(now_ms)
    bad = bad_messages(now_ms)
    rng = random.Random(31)
    mixed = list(stream)
    for message in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), message)

    parts = 6
    size = len(mixed) // parts + 1
    kills = 0
    recoveries = []
    bad_coordinates = set()
    bad_values = {value for _, _, value in bad}
    worker = Worker(env, name="crash-0").start()
    try:
        for part in range(parts):
            chunk = mixed[part * size : (part + 1) * size]
            metadata = publish_with_metadata(settings, chunk)
            bad_coordinates |= {
                meta
                for meta, (_, _, value) in zip(metadata, chunk, strict=True)
                if value in bad_values
            }
            if part < parts - 1:
                # Let it get somewhere, then pull the plug at a random moment.
                time.sleep(rng.uniform(0.3, 2.0))
                worker.kill()
                kills += 1
                started = time.monotonic()
                worker = Worker(env, name=f"crash-{kills}").start()
                recoveries.append(time.monotonic() - started)
        started = time.monotonic()
        wait_for(lambda: drained(settings), 180, "drain after the last restart", worker.check_alive)
        drain_s = time.monotonic() - started
    finally:
        worker.stop()

    profiles = export(env, tmp_path / "after-crashes.jsonl")
    expected = recompute(good)
    assert_profiles_match(profiles, expected)
    letters = [json.loads(r.value) for r in read_topic(settings, settings.topic("events-dlq"))]
    assert {(d["source_topic"], d["partition"], d["offset"]) for d in letters} == bad_coordinates
    record(
        "kill -9 mid-stream" + on_cluster(env),
        events=len(mixed),
        good=len(good),
        bad=len(bad),
        kills=kills,
        restart_to_web_ready_s=[round(r, 2) for r in recoveries],
        final_drain_s=round(drain_s, 2),
        dlq_messages=len(letters),
        dlq_distinct=len({d["event_id"] for d in letters}),
    )


OUTAGE_SETTINGS = {
    "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
    "PATRONAGE_REDIS_RETRY_MAX_S": "1",
    "PATRONAGE_LAG_INTERVAL_S": "1",
    "PATRONAGE_BATCH_MAX": "200",
}


def outage_mid_stream(
    env: dict[str, str],
    name: str,
    tmp_path: Path,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> dict[str, float]:
    """Publish half the stream, `stop` (part of) Redis once the worker is
    applying, publish the rest, `start` it again; check that nothing was
    committed while down, /readyz said so, the same worker recovered and every
    field of every profile is exact. Returns the figures."""
    settings = settings_with_topics(env)
    good, stream = build_stream(int(time.time() * 1000))
    half = len(stream) // 2
    worker = Worker(env, name=name).start()
    try:
        publish_with_metadata(settings, stream[:half])
        wait_for(
            lambda: metric_sum(worker.http("/metrics")[1], "patronage_events_applied_total") > 0,
            60,
            "the worker to be applying",
            worker.check_alive,
        )
        stop()  # mid-stream: the first half is being applied
        down_at = time.monotonic()
        publish_with_metadata(settings, stream[half:])  # the shops keep selling
        wait_for(lambda: worker.http("/readyz")[0] == 503, 15, "/readyz 503 while Redis is down")
        time.sleep(3)  # offsets of batches applied before the stop may still commit
        lag_while_down = cli_lag(env)[0]
        time.sleep(5)
        assert cli_lag(env)[0] == lag_while_down, "offsets moved while nothing could be applied"
        # Work applied before the stop was committed; the rest all waits.
        assert len(stream) - half <= lag_while_down < len(stream)
        start()
        down_s = time.monotonic() - down_at
        back_at = time.monotonic()
        wait_for(lambda: worker.http("/readyz")[0] == 200, 30, "/readyz 200 again")
        ready_after_s = time.monotonic() - back_at
        wait_for(lambda: drained(settings), 120, "drain after Redis returned", worker.check_alive)
        drain_s = time.monotonic() - back_at
        retries = metric_sum(worker.http("/metrics")[1], "patronage_redis_retries_total")
        pid_unchanged = worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()
    assert pid_unchanged, "the worker had to be restarted by hand"
    assert retries >= 1
    # Every field of every profile, not just counts.
    assert_profiles_match(export(env, tmp_path / f"after-{name}.jsonl"), recompute(good))
    return {
        "events": len(stream),
        "down_s": round(down_s, 1),
        "uncommitted_while_down": lag_while_down,
        "ready_after_back_s": round(ready_after_s, 1),
        "drain_after_back_s": round(drain_s, 1),
        "redis_retries": int(retries),
    }


def test_redis_outage_mid_stream_commits_nothing_unapplied(
    isolated_env: dict[str, str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Redis stopped while the worker is applying a stream, started again later.

    Only a real server shows the failure modes that matter: connections
    dropped mid-pipeline, the worker's retry with backoff against a refused
    port, and offsets that must not move while nothing can be applied.
    """
    env = {
        **isolated_env,
        **OUTAGE_SETTINGS,
        "PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0",
    }
    figures = outage_mid_stream(
        env, "redis-outage", tmp_path, private_redis.stop, private_redis.start
    )
    record("redis outage mid-stream", **figures)


def test_redis_cluster_master_outage_mid_stream(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """One of three masters stopped mid-stream, started again later.

    Only a real cluster shows this: a batch is one pipeline per master, so
    the other masters apply their part while the stopped one refuses; the
    whole batch is retried (and must not double the parts already applied),
    the restarted master has forgotten the Lua scripts, and the client must
    find the node again.
    """
    require_redis_server()
    # With an ACL user: the per-master pipelines must log in like the cluster client.
    acl = ("patronage-worker", "cluster-secret")
    cluster = RedisCluster3(tmp_path / "cluster", durable=True, acl=acl).start()
    env = {
        **isolated_env,
        **OUTAGE_SETTINGS,
        "PATRONAGE_REDIS_URL": cluster.url,
        "PATRONAGE_REDIS_CLUSTER": "true",
        "PATRONAGE_REDIS_USERNAME": acl[0],
        "PATRONAGE_REDIS_PASSWORD": acl[1],
    }
    try:
        # Node 0 is the one the settings name, to be harsh.
        figures = outage_mid_stream(
            env,
            "cluster-outage",
            tmp_path,
            lambda: cluster.stop_node(0),
            lambda: cluster.start_node(0),
        )
    finally:
        cluster.stop()
    record("redis cluster: one master down mid-stream", **figures)


# --- hostile input ---------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
WEIRD_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40
) | st.sampled_from(
    [
        "\u202e",
        "\ufeff",
        "\u0000",
        "e\u0301",
        "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
        "🛒" * 20,
    ]
)


def _object(keys: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return st.dictionaries(keys, JSON_SCALARS | WEIRD_TEXT, max_size=8).map(
        lambda d: json.dumps(d).encode()
    )


HOSTILE = st.one_of(
    st.binary(max_size=64),  # not JSON, maybe not UTF-8
    st.text(max_size=64).map(lambda t: ("{" + t).encode("utf-8", "surrogatepass")),
    _object(st.sampled_from(["event_id", "ts", "session_id", "page_type", "items", "total"])),
    _object(WEIRD_TEXT),  # wrong keys
    st.builds(
        lambda n: ('{"customer_id": ' + "[" * n + "]" * n + "}").encode(),
        st.integers(min_value=50, max_value=5000),
    ),  # deep nesting
    st.builds(
        lambda cid, n: json.dumps({"event_id": "e", "customer_id": cid, "ts": "x" * n}).encode(),
        WEIRD_TEXT.filter(lambda s: s.strip() != ""),
        st.integers(min_value=100, max_value=200_000),
    ),  # huge strings
    st.sampled_from(
        [
            b'{"event_id":"e","customer_id":"c","ts":NaN}',
            b'{"event_id":"e","customer_id":"c","ts":Infinity}',
            b'{"event_id":"e","customer_id":"c","ts":-Infinity,"session_id":"s"}',
            b'\xff\xfe{"a":1}',
            b"null",
            b"[]",
            b'"just a string"',
            b"",
        ]
    ),
    st.builds(
        lambda cid, t: json.dumps({"event_id": 1, "customer_id": cid, "ts": t}).encode(),
        st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none()),
        JSON_SCALARS,
    ),  # wrong types
)


def collect_hostile(count: int) -> list[bytes]:
    rules = Rules()
    found: list[bytes] = []

    @settings(
        max_examples=count * 2,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(HOSTILE)
    def gather(payload: bytes) -> None:
        if len(found) < count and isinstance(validate(payload, "click", 0, rules), Rejected):
            found.append(payload)

    while len(found) < count:
        gather()
    return found


def test_hostile_input_never_stops_the_worker(isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = {**isolated_env, "PATRONAGE_COMMIT_INTERVAL_S": "0.5"}
    settings = settings_with_topics(env)
    hostile = collect_hostile(10_000)
    now_ms = int(time.time() * 1000)
    good, stream = build_stream(now_ms)
    good_ids = {e["event_id"] for e in good}
    rng = random.Random(5)
    mixed: list[tuple[str, str | None, bytes]] = list(stream)
    for payload in hostile:
        mixed.insert(
            rng.randrange(len(mixed) + 1), ("clicks", f"c{rng.randrange(250):06d}", payload)
        )
    worker = Worker(env, name="hostile").start()
    pid = worker.proc.pid if worker.proc else None
    try:
        started = time.monotonic()
        publish_with_metadata(settings, mixed)
        wait_for(lambda: drained(settings), 300, "drain of hostile input", worker.check_alive)
        elapsed = time.monotonic() - started
        assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
        assert worker.http("/metrics")[0] == 200
    finally:
        worker.stop()
    letters = [json.loads(r.value) for r in read_topic(settings, settings.topic("events-dlq"), 15)]
    assert len({d["event_id"] for d in letters}) == len(hostile)
    assert all(d["reason"] and d["error"] for d in letters)
    profiles = export(env, tmp_path / "hostile.jsonl")
    expected = recompute(good)
    assert_profiles_match(profiles, expected)
    assert sum(p["events_applied"] for p in profiles.values()) == len(good_ids)
    reasons = Counter(d["error"] for d in letters)
    record(
        "hostile input",
        payloads=len(hostile),
        good_events=len(good),
        seconds=round(elapsed, 1),
        worker_restarts=0,
        dlq_reasons=reasons,
    )


def schema_mutations(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(topic, payload): schema-valid documents — drawn from the published
    JSON Schemas, and real-shaped simulator events — each with one leaf
    replaced by an adversarial value (tests/schema_fuzz.py)."""
    rng = random.Random(seed)
    corpus = schema_corpus(25)
    events, _ = generate(
        customers=40, days=30, seed=seed, start_ms=int(time.time() * 1000) - 31 * DAY_MS
    )
    for n, event in enumerate(events):
        kind = event.pop("type")
        # Their own customers: an accepted mutation never touches a good profile.
        corpus[kind].append({**event, "customer_id": f"fz{n}-{event['customer_id']}"})
    out = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        doc = rng.choice(corpus[kind])
        out.append((TOPIC_OF[kind], mutate(doc, rng, huge=rng.random() < 0.01)))
    return out


def test_schema_fuzzed_records_never_stop_the_worker(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """10,000 schema-derived records with one leaf made adversarial, on every
    input topic, interleaved with a real-shaped stream: the worker never exits,
    every record is applied or on the DLQ with a reason, good profiles exact.

    A mock would not catch what this found: bytes the broker accepts that
    Redis's Lua, cjson or the hash tag of a key cannot take."""
    env = {**isolated_env, "PATRONAGE_COMMIT_INTERVAL_S": "0.5"}
    settings = settings_with_topics(env)
    now_ms = int(time.time() * 1000)
    good, stream = build_stream(now_ms)
    fuzzed = schema_mutations(10_000, seed=11) + [
        ("clicks", payload) for payload in collect_hostile(1_000)
    ]
    # What batch preparation decides for each, so the DLQ can be checked exactly.
    kinds = settings.input_topics
    predicted_letters = 0
    for topic, payload in fuzzed:
        batch = prepare_batch(
            [Record(topic, 0, 0, None, payload)],
            {topic: kinds[settings.topic(topic)]},
            settings.rules,
            now_ms,
            settings.zone,
        )
        predicted_letters += sum(1 for _, d in batch.dead_letters if d.line is None)
    rng = random.Random(5)
    mixed: list[tuple[str, str | None, bytes]] = list(stream)
    positions = sorted(rng.sample(range(len(mixed) + len(fuzzed)), len(fuzzed)))
    for position, (topic, payload) in zip(positions, fuzzed, strict=True):
        mixed.insert(position, (topic, f"fz{position}", payload))
    worker = Worker(env, name="fuzz").start()
    pid = worker.proc.pid if worker.proc else None
    try:
        started = time.monotonic()
        metadata = publish_with_metadata(settings, mixed)
        wait_for(lambda: drained(settings), 420, "drain of fuzzed input", worker.check_alive)
        elapsed = time.monotonic() - started
        assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
        applied = metric_sum(worker.http("/metrics")[1], "patronage_events_applied_total")
    finally:
        worker.stop()
    fuzz_coordinates = {metadata[p] for p in positions}
    letters = [json.loads(r.value) for r in read_topic(settings, settings.topic("events-dlq"), 15)]
    record_letters = {
        (d["source_topic"], d["partition"], d["offset"]): d for d in letters if d["line"] is None
    }
    assert set(record_letters) <= fuzz_coordinates  # no good event on the DLQ
    assert len(record_letters) == predicted_letters
    assert all(d["reason"] and d["error"] for d in letters)
    assert all(len(json.dumps(d)) < 1_000_000 for d in letters)
    profiles = export(env, tmp_path / "fuzz.jsonl")
    good_profiles = {cid: p for cid, p in profiles.items() if not cid.startswith("fz")}
    expected = recompute(good)
    assert_profiles_match({c: good_profiles.get(c, {}) for c in expected}, expected)
    reasons = Counter(d["error"] for d in letters)
    record(
        "schema-fuzzed input",
        fuzzed_records=len(fuzzed),
        dead_letters=len(record_letters),
        line_letters=len(letters) - len(record_letters),
        good_events=len(good),
        events_applied=applied,
        seconds=round(elapsed, 1),
        worker_restarts=0,
        dlq_reasons=reasons,
    )


def test_redis_at_maxmemory_with_noeviction_blocks_then_resumes(
    isolated_env: dict[str, str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A single Redis that runs out of memory (maxmemory, noeviction) mid-stream.

    Only a real server answers OOM to a write, and only a real server shows
    that a Lua script without a shebang fails at its first write *after*
    earlier ones landed: the worker must back off (not ready, nothing
    committed) and apply every event exactly once when memory is freed."""
    env = {
        **isolated_env,
        **OUTAGE_SETTINGS,
        "PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0",
    }

    def config(*args: str) -> None:
        import subprocess

        subprocess.run(
            ["redis-cli", "-p", str(private_redis.port), "config", "set", *args],
            check=True,
            capture_output=True,
        )

    def full() -> None:
        config("maxmemory-policy", "noeviction")
        config("maxmemory", "1")  # every write is now over the limit

    figures = outage_mid_stream(env, "redis-oom", tmp_path, full, lambda: config("maxmemory", "0"))
    record("redis at maxmemory (noeviction) mid-stream", **figures)


def test_redis_cluster_slot_migration_while_the_worker_runs(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """Slots holding customers' keys move between masters mid-stream.

    A mock cannot produce this: during MIGRATE the source answers ASK and
    TRYAGAIN for a half-moved slot, afterwards every node answers MOVED, and
    redis-py strips the error code from the message (the old check on the
    message text never matched, so MOVED was never retried)."""
    require_redis_server()
    cluster = RedisCluster3(tmp_path / "cluster").start()
    env = {
        **isolated_env,
        **OUTAGE_SETTINGS,
        "PATRONAGE_REDIS_URL": cluster.url,
        "PATRONAGE_REDIS_CLUSTER": "true",
    }
    try:
        settings = settings_with_topics(env)
        good, stream = build_stream(int(time.time() * 1000))
        half = len(stream) // 2
        worker = Worker(env, name="slot-migration").start()
        try:
            publish_with_metadata(settings, stream[:half])
            wait_for(
                lambda: (
                    metric_sum(worker.http("/metrics")[1], "patronage_events_applied_total") > 500
                ),
                60,
                "the worker to be applying",
                worker.check_alive,
            )
            import threading

            from redis.crc import key_slot

            def publish_slowly() -> None:
                rest = stream[half:]
                for start in range(0, len(rest), len(rest) // 20 + 1):
                    publish_with_metadata(settings, rest[start : start + len(rest) // 20 + 1])
                    time.sleep(0.4)

            publisher = threading.Thread(target=publish_slowly)
            publisher.start()
            # The slots of customers being updated right now that master 0
            # (slots 0..5460) owns: moved, keys and all, while events arrive.
            prefix = env["PATRONAGE_KEY_PREFIX"]
            slots = sorted(
                {
                    key_slot(f"{prefix}:{{c{n:06d}}}:p".encode())
                    for n in range(250)
                    if key_slot(f"{prefix}:{{c{n:06d}}}:p".encode()) <= 5460
                }
            )
            moved_keys = sum(cluster.migrate_slot(slot, 0, 1, batch=2) for slot in slots)
            publisher.join()
            wait_for(lambda: drained(settings), 180, "drain after migration", worker.check_alive)
            retries = metric_sum(worker.http("/metrics")[1], "patronage_redis_retries_total")
            assert worker.proc is not None and worker.proc.poll() is None
        finally:
            worker.stop()
        assert moved_keys > 0
        assert retries > 0, "the worker never met a moved slot: the test did not test"
        assert_profiles_match(export(env, tmp_path / "migrated.jsonl"), recompute(good))
        record(
            "redis cluster slot migration mid-stream",
            events=len(stream),
            slots_moved=len(slots),
            keys_moved=moved_keys,
            redis_retries=int(retries),
            worker_restarts=0,
        )
    finally:
        cluster.stop()
