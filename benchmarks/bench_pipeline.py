"""Where a worker's time goes without Kafka: the pipeline alone on the real Redis.

    python -m benchmarks.bench_pipeline [--events 100000] [--repeats 3]
        [--customers N] [--batch N]

The simulated backlog of `bench throughput` is cut into batches of
`PATRONAGE_BATCH_MAX` records (`--batch`: smaller, as a live worker's; with
`--customers`, spread over that many, few events each, as a live worker
meets them) and fed to `Pipeline` with the real Redis store
and a producer that only records (no broker), two ways in one run:

* sequential: prepare (validation, deltas) then finish (Redis apply, dead
  letters, alerts, scoring, learner messages), batch after batch, as the
  ingest loop does;
* overlapped: the next batch is prepared while Redis applies the previous
  one (measured to decide whether the ingest loop should; it did not pay);
* process: the next batch is prepared in the prepare process while this
  process finishes the previous one (`Pipeline.prepare_in`, what the worker
  does with PATRONAGE_PREPARE_PROCESS, streams/preparing.py), without Kafka.

Prints events/s and the time per event spent in prepare and in finish. The
gap between these figures and `bench throughput` is what consuming from
Kafka costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from benchmarks.bench_personas import records_of
from patronage import compiled
from patronage.models.batch import Record
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.fitpool import FitProcess
from patronage.streams.memory import RecordingProducer, StaticLog
from patronage.streams.pipeline import Pipeline
from patronage.streams.segmenting import ModelStore
from patronage.streams.settings import Settings, settings_with
from patronage.streams.store import ProfileStore, redis_for


def backlog(events_target: int, settings: Settings, customers: int | None = None) -> list[Record]:
    now_ms = int(time.time() * 1000)
    customers = customers or max(100, events_target // 60)
    events, _ = generate(customers, 90, seed=3, start_ms=(now_ms // DAY_MS - 90) * DAY_MS)
    return records_of(events[:events_target], settings)


def fresh_pipeline(env: dict[str, str] | None = None) -> tuple[str, Settings, Any, Pipeline]:
    """A pipeline on the real Redis under a key prefix of its own (deleted
    after the drain), with a producer that only records; `env`: settings
    beside the prefix (another Redis, say)."""
    prefix = f"benchpipe{uuid.uuid4().hex[:6]}"
    settings = settings_with({"PATRONAGE_KEY_PREFIX": prefix, **(env or {})})
    client = redis_for(settings)
    pipe = Pipeline(
        settings,
        ProfileStore(client, prefix, settings.profile_config),
        ModelStore(client, prefix),
        RecordingProducer(),
    )
    return prefix, settings, client, pipe


async def drain_in_process_pool(
    records: list[Record], process: FitProcess, batch: int | None = None
) -> dict[str, Any]:
    """The worker's way (Pipeline.prepare_in), batches of PATRONAGE_BATCH_MAX."""
    prefix, settings, client, pipe = fresh_pipeline()
    pipe.prepare_process = process
    inputs = StaticLog()
    size = batch or settings.batch_max
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    started = time.perf_counter()
    pending = await pipe.prepare_in(chunks[0], inputs)
    for following in [*chunks[1:], None]:
        work = pending
        if following is not None:
            pending = await pipe.prepare_in(following, inputs)  # prepared there while finished here
        await pipe.process_prepared(work)
    elapsed = time.perf_counter() - started
    await _delete_prefix(client, prefix)
    return {
        "mode": "process",
        "compiled_modules": compiled.in_use(),
        "events": len(records),
        "events_per_second": round(len(records) / elapsed),
    }


async def _delete_prefix(client: Any, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()


async def drain(
    records: list[Record], overlapped: bool, batch: int | None = None
) -> dict[str, Any]:
    prefix, settings, client, pipe = fresh_pipeline()
    size = batch or settings.batch_max
    prepare_s = finish_s = 0.0

    async def finish(work: Any) -> None:
        nonlocal finish_s
        started = time.perf_counter()
        await pipe.finish(work)
        finish_s += time.perf_counter() - started

    in_flight: asyncio.Task[None] | None = None
    started = time.perf_counter()
    for first in range(0, len(records), size):
        t = time.perf_counter()
        work = await pipe.prepare(records[first : first + size], StaticLog())
        prepare_s += time.perf_counter() - t
        if in_flight is not None:
            await in_flight
        if overlapped:
            in_flight = asyncio.create_task(finish(work))
            # As the ingest loop's `getmany` does: let it send its commands.
            await asyncio.sleep(0)
        else:
            await finish(work)
    if in_flight is not None:
        await in_flight
    elapsed = time.perf_counter() - started
    await _delete_prefix(client, prefix)
    n = len(records)
    return {
        "mode": "overlapped" if overlapped else "sequential",
        "compiled_modules": compiled.in_use(),
        "events": n,
        "events_per_second": round(n / elapsed),
        "prepare_us_per_event": round(prepare_s / n * 1e6, 1),
        # Overlapped, finish's wall time includes the prepare it waited behind.
        "finish_wall_us_per_event": round(finish_s / n * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["sequential", "overlapped", "process"],
        default=["sequential", "overlapped", "process"],
    )
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    records = backlog(args.events, Settings(), args.customers)
    process = FitProcess(role="prepare")
    process.pool.submit(int).result()  # started before the clock runs
    try:
        for _ in range(args.repeats):
            for mode in args.modes:
                if mode == "process":
                    result = asyncio.run(drain_in_process_pool(records, process, args.batch))
                else:
                    overlapped = mode == "overlapped"
                    result = asyncio.run(drain(records, overlapped, args.batch))
                print(json.dumps(result))
    finally:
        process.shutdown()


if __name__ == "__main__":
    main()
