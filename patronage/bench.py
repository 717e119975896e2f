"""Benchmarks on the real local Kafka + Redis. Prints its figures; rerun freely.

python -m patronage.bench memory --customers 100000
python -m patronage.bench throughput --events 200000
python -m patronage.bench            # both, default sizes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from patronage.models.batch import Record, prepare_batch
from patronage.models.simulate import DAY_MS, generate
from patronage.streams.settings import Settings
from patronage.streams.store import ProfileStore, make_redis


def _settings(**env: str) -> Settings:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def memory(customers: int, days: int) -> dict[str, float]:
    """Redis bytes per profile for a simulated population (applied through the real script)."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = _settings(PATRONAGE_KEY_PREFIX=prefix)
    client = make_redis(settings.redis_url)
    store = ProfileStore(client, prefix, settings.profile_config)
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms // DAY_MS - days) * DAY_MS
    before = int((await client.info("memory"))["used_memory"])
    events = 0
    chunk = 5000
    try:
        for first in range(0, customers, chunk):
            size = min(chunk, customers - first)
            stream, _ = generate(size, days, seed=first + 1, start_ms=start_ms)
            records = []
            for offset, event in enumerate(stream):
                event["customer_id"] = f"b{first + int(event['customer_id'][1:]):07d}"
                topic = settings.topic_for_kind[event["type"]]
                records.append(
                    Record(topic, 0, first * 1000 + offset, None, json.dumps(event).encode())
                )
            batch = prepare_batch(
                records, settings.input_topics, settings.rules, now_ms, settings.zone
            )
            grouped = batch.by_customer
            ids = list(grouped)
            for i in range(0, len(ids), 500):
                await store.apply_batch({cid: grouped[cid] for cid in ids[i : i + 500]})
            events += len(records)
        after = int((await client.info("memory"))["used_memory"])
        sample = [f"b{i:07d}" for i in range(0, customers, max(1, customers // 500))]
        usage = [await store.memory_usage(cid) for cid in sample]
        return {
            "customers": customers,
            "events": events,
            "events_per_customer": events / customers,
            "used_memory_delta_bytes_per_profile": (after - before) / customers,
            "memory_usage_bytes_per_profile_sampled": sum(usage) / len(usage),
        }
    finally:
        await store.delete_prefix()
        await client.aclose()


def throughput(events_target: int) -> dict[str, float]:
    """Events/s of one worker process draining a backlog end to end (Kafka -> Redis)."""
    run = uuid.uuid4().hex[:6]
    env = {
        "PATRONAGE_TOPIC_PREFIX": f"bench{run}-",
        "PATRONAGE_GROUP_ID": f"bench{run}",
        "PATRONAGE_KEY_PREFIX": f"bench{run}",
        "PATRONAGE_LOG_LEVEL": "warn",
        "PATRONAGE_WEB_PORT": "6099",
        "PATRONAGE_DATA_DIR": f"/tmp/patronage-bench-{run}",
    }
    settings = _settings(**env)
    from patronage.streams.cli import create_topics, publish_file
    from patronage.streams.lag import group_lag

    asyncio.run(create_topics(settings))
    now_ms = int(time.time() * 1000)
    customers = max(100, events_target // 60)
    stream, _ = generate(customers, 90, seed=3, start_ms=(now_ms // DAY_MS - 90) * DAY_MS)
    stream = stream[:events_target]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for event in stream:
            handle.write(json.dumps(event) + "\n")
    asyncio.run(publish_file(settings, Path(handle.name)))
    os.unlink(handle.name)

    proc = subprocess.Popen(
        [sys.executable, "-m", "patronage.streams.cli", "worker"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    first_progress = None
    try:
        while True:
            rows = asyncio.run(group_lag(settings))
            remaining = sum(r.lag for r in rows)
            if first_progress is None and remaining < len(stream):
                first_progress = time.monotonic()
            if remaining == 0:
                break
            if time.monotonic() - started > 600:
                raise RuntimeError("worker did not drain the backlog in 600 s")
            time.sleep(0.2)
        finished = time.monotonic()
        cpu = _child_cpu(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    busy = finished - (first_progress or started)
    result = {
        "events": len(stream),
        "customers": customers,
        "drain_seconds": busy,
        "events_per_second": len(stream) / busy,
        "worker_start_to_drained_seconds": finished - started,
    }
    if cpu is not None:
        result["worker_cpu_seconds"] = cpu
        result["cpu_microseconds_per_event"] = cpu / len(stream) * 1e6
    asyncio.run(_cleanup(settings))
    return result


def _child_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


async def _cleanup(settings: Settings) -> None:
    client = make_redis(settings.redis_url)
    try:
        await ProfileStore(client, settings.key_prefix, settings.profile_config).delete_prefix()
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m patronage.bench")
    parser.add_argument("which", nargs="?", default="all", choices=["all", "memory", "throughput"])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    if args.which in ("all", "memory"):
        print("memory:", json.dumps(asyncio.run(memory(args.customers, args.days)), indent=1))
    if args.which in ("all", "throughput"):
        print("throughput:", json.dumps(throughput(args.events), indent=1))
    print(f"bench peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
