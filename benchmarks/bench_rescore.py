"""What one promotion costs each worker: a re-scoring pass at scale.

    python -m benchmarks.bench_rescore [--customers 1000000] [--partitions 8] [--share 0.25]

Writes N profiles (varied fields, enough for features and RFM) spread over
the partitions, with the per-partition members sets ingest maintains; a
trainer promotes version 1 from a sample. Then two workers — each owning
half of the partitions, one after the other in this process, with its own
Segmenter on the real Redis — re-score their partitions. Printed per worker:
customers read, seconds, Redis commands (INFO commandstats delta) and
commands per owned customer; then a second promotion (version 2) and the
same again. Keys whole keyspace = 2 x owned: a pass that scanned every key
would read twice what a worker owns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from typing import Any

from patronage.models.features import features, rfm_inputs
from patronage.models.layout import PARKED, encode_profile
from patronage.models.segments import SegmentTrainer
from patronage.models.timeunits import DAY_MS
from patronage.streams.segmenting import ModelStore, Segmenter, partition_for
from patronage.streams.settings import Settings
from patronage.streams.store import ProfileStore, redis_for

NOW_MS = 1_767_225_600_000


def profile_fields(rng: random.Random) -> dict[str, float]:
    orders = rng.randint(1, 40)
    online = rng.randint(0, orders)
    visits = rng.randint(1, 60)
    span = rng.uniform(0, 365)
    first_seen = NOW_MS - span * DAY_MS - rng.uniform(0, 30) * DAY_MS
    basket = rng.lognormvariate(3, 0.6)
    return {
        "first_seen": first_seen,
        "last_seen": first_seen + span * DAY_MS,
        "orders": orders,
        "orders_online": online,
        "orders_store": orders - online,
        "clicks": rng.randint(0, 400),
        "basket_sum": basket * orders,
        "freq_decayed": rng.uniform(0.1, 8),
        "monetary_decayed": rng.uniform(5, 600),
        "visits": visits,
        "first_day": 0,
        "last_day": span,
        "gap_sumsq": (span / max(1, visits - 1)) ** 2 * max(1, visits - 1) * rng.uniform(1, 2),
        "returns_value": basket * orders * rng.uniform(0, 0.2),
        "cat:grocery": rng.uniform(0, 500),
        "cat:drinks": rng.uniform(0, 200),
    }


async def populate(store: ProfileStore, customers: int, partitions: int, seed: int) -> None:
    rng = random.Random(seed)
    chunk = 5000
    for start in range(0, customers, chunk):
        async with store.client.pipeline(transaction=False) as pipe:
            members: dict[int, list[str]] = {}
            for i in range(start, min(customers, start + chunk)):
                customer = f"c{i:07d}"
                pipe.set(store.keys(customer).profile, encode_profile(profile_fields(rng)))
                members.setdefault(partition_for(customer, partitions), []).append(customer)
            for partition, ids in members.items():
                # Listed as a live worker lists them: parked, nothing pending.
                pipe.zadd(store.due_key(partition), dict.fromkeys(ids, PARKED + NOW_MS))
            await pipe.execute()


async def promote(store: ProfileStore, models: ModelStore, trainer: SegmentTrainer) -> int:
    """Learn from a sample of the stored profiles and promote the next version."""
    cursor, learned = 0, 0
    while learned < 5000:
        cursor, ids = await store.partition_members(learned % 8, cursor, 1000)
        for customer, fields in (await store.fields_of(ids)).items():
            trainer.learn(customer, features(fields), None, rfm_inputs(fields, NOW_MS, 30 * DAY_MS))
            learned += 1
    model = trainer.freeze(int(time.time() * 1000))
    assert model is not None
    await models.promote(model, json.dumps(trainer.to_checkpoint()))
    return model.version


async def commands(client: Any) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def pass_of(settings: Settings, store: ProfileStore, owned: set[int]) -> dict[str, float]:
    segmenter = Segmenter(settings, ModelStore(store.client, settings.key_prefix), store)
    await segmenter.refresh()
    sent = 0

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        nonlocal sent
        sent += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    before = await commands(store.client)
    started = time.perf_counter()
    read = await segmenter.rescore_partitions(owned, float(NOW_MS), send)
    seconds = time.perf_counter() - started
    used = await commands(store.client) - before - 1  # the INFO call itself
    return {
        "owned_partitions": len(owned),
        "customers_read": read,
        "seconds": round(seconds, 2),
        # The slices' own time; the rest of `seconds` is the pass resting to
        # stay under PATRONAGE_BACKGROUND_PASS_SHARE of the worker's time.
        "busy_seconds": round(segmenter.rescore_busy_s, 2),
        "customers_per_busy_second": round(read / max(1e-9, segmenter.rescore_busy_s)),
        "redis_commands": used,
        "commands_per_owned_customer": round(used / max(1, read), 3),
        "segment_change_events": sent,
    }


async def run(customers: int, partitions: int, share: float | None) -> None:
    chosen = {} if share is None else {"background_pass_share": share}
    prefix = f"rescore{uuid.uuid4().hex[:6]}"
    settings = Settings(key_prefix=prefix, partitions=partitions, **chosen)
    client = redis_for(settings)
    store = ProfileStore(client, settings.key_prefix, settings.profile_config)
    models = ModelStore(client, settings.key_prefix)
    trainer = SegmentTrainer(n_clusters=settings.segments, warmup=1000, warmup_days=0)
    try:
        started = time.perf_counter()
        await populate(store, customers, partitions, seed=1)
        print(
            json.dumps(
                {
                    "customers": customers,
                    "populate_seconds": round(time.perf_counter() - started, 1),
                }
            )
        )
        halves = [set(range(partitions // 2)), set(range(partitions // 2, partitions))]
        for _ in range(2):
            version = await promote(store, models, trainer)
            for worker, owned in zip("AB", halves, strict=True):
                result = await pass_of(settings, store, owned)
                print(json.dumps({"model_version": version, "worker": worker, **result}))
    finally:
        await store.delete_prefix()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_rescore")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--share", type=float, default=None, help="PATRONAGE_BACKGROUND_PASS_SHARE (default: its)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.partitions, args.share))


if __name__ == "__main__":
    main()
