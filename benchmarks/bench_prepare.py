"""What preparing a batch costs, per event kind, and what the hop to the
prepare process costs on each side. No Kafka, no Redis.

    python -m benchmarks.bench_prepare [--events 200000] [--backlog-customers 100000]

The backlog is `bench throughput`'s (same seed; with `--backlog-customers`,
many customers and few events each, as a live worker meets them). Printed,
the best of `--repeats`:

* `prepare_batch` per record, for each topic's records alone and for all
  (in batches of `--batch` records, as the worker takes them), without
  automatic collections (`--collector on`: with them);
* the hop (streams/preparing.py) in batches of `--batch` records: pickling
  the records (the worker), unpickling them, packing the deltas for Redis
  and pickling the prepared batch (the prepare process, `packed`),
  unpickling it (the worker, `unpacked`), and the prepared batch's bytes
  per record.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import pickle
import time
import timeit
from collections.abc import Callable
from typing import Any

from benchmarks.bench import backlog
from benchmarks.bench_personas import records_of
from patronage import compiled
from patronage.models.batch import Record, packed_for_redis, prepare_batch
from patronage.streams.preparing import packed, record_columns, records_from, unpacked
from patronage.streams.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_prepare")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backlog-customers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--collector",
        choices=("off", "on"),
        default="off",
        help="automatic garbage collection while preparing: off as the worker and its "
        "prepare processes run (streams/collector.py, streams/preparing.py), on as the "
        "prepare process ran before",
    )
    args = parser.parse_args()
    settings = Settings()
    records = records_of(backlog(args.events, customers=args.backlog_customers), settings)
    kinds = {topic: kind for kind, topic in settings.topic_for_kind.items()}
    rules, zone = settings.rules, settings.zone
    now_ms = int(time.time() * 1000)
    # As in the worker (streams/collector.py): no collections while a batch is
    # in hand (timeit turns them off itself; `--collector on` back on).
    gc.disable()
    setup = "import gc; gc.enable()" if args.collector == "on" else "pass"

    def per_record(run: Callable[[], Any], count: int) -> float:
        best = min(timeit.repeat(run, setup=setup, number=1, repeat=args.repeats))
        return round(best / count * 1e6, 2)

    by_topic: dict[str, list[Record]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    for topic, mine in sorted(by_topic.items()):
        cost = per_record(
            lambda mine=mine: prepare_batch(mine, kinds, rules, now_ms, zone), len(mine)
        )
        print(
            json.dumps({"prepare_batch": kinds[topic], "records": len(mine), "us_per_record": cost})
        )
    # All of them as the worker takes them: a batch at a time.
    batches = [records[i : i + args.batch] for i in range(0, len(records), args.batch)]
    cost = per_record(
        lambda: [prepare_batch(b, kinds, rules, now_ms, zone) for b in batches], len(records)
    )
    form = {"compiled_modules": compiled.in_use(), "collector": args.collector}
    print(
        json.dumps({"prepare_batch": "all", "records": len(records), "us_per_record": cost, **form})
    )

    def send(b: list[Record]) -> bytes:
        return pickle.dumps(record_columns(b), protocol=pickle.HIGHEST_PROTOCOL)

    sent = [send(b) for b in batches]
    prepared = [prepare_batch(b, kinds, rules, now_ms, zone, {}) for b in batches]
    # As the worker's store codes them (streams/store.py `source_codes`).
    labels = {
        d.source
        for p in prepared
        for deltas in p.by_customer.values()
        if isinstance(deltas, list)
        for d in deltas
    }
    codes = {label: f"{i}:{label.partition(':')[2]}" for i, label in enumerate(sorted(labels))}
    n = len(records)
    # Each time on a copy of the batches' customer maps (packing replaces their values).
    packing = per_record(
        lambda: [
            packed_for_redis(dataclasses.replace(p, by_customer=dict(p.by_customer)), codes)
            for p in prepared
        ],
        n,
    )
    for p in prepared:
        packed_for_redis(p, codes)
    back = [packed(p, b) for p, b in zip(prepared, batches, strict=True)]
    hop = {
        "records_pickled_us": per_record(lambda: [send(b) for b in batches], n),
        "records_unpickled_us": per_record(
            lambda: [records_from(pickle.loads(s)) for s in sent], n
        ),
        "deltas_packed_us": packing,
        "prepared_pickled_us": per_record(
            lambda: [packed(p, b) for p, b in zip(prepared, batches, strict=True)], n
        ),
        "prepared_unpickled_us": per_record(
            lambda: [unpacked(blob, b) for blob, b in zip(back, batches, strict=True)], n
        ),
        "prepared_bytes_per_record": round(sum(map(len, back)) / n),
    }
    print(json.dumps({"hop_per_record": hop}))


if __name__ == "__main__":
    main()
