"""Preparing a batch in the worker's prepare process.

Validation and delta building are pure Python, 35-45 % of the worker's
main thread in a drain. While the worker finishes batch N (Redis apply,
outputs, scoring), batch N+1 is prepared in a helper process
(`fitpool.FitProcess`: exits with its worker, started again when it dies).
It pays where the worker's core is the limit and another is free (+19 %
with many customers on the 2-core benchmark machine, nothing where Kafka
and Redis already take the second core: docs/benchmarks.md).

The records go there as five lists of plain values (`record_columns`:
pickling those costs the worker less than half of pickling a `Record`
each, and the pickling runs in the pool's feeder thread, which holds the
GIL the ingest loop needs), and the prepared batch comes back pickled
without them (the worker still holds them; `records_of` travels as
positions). Each customer's deltas come back packed as the apply script
reads them (one bytes object, not a Delta object each: the hop costs less
and the packing is off the worker's thread). The worker unpickles with the
collector held off: a 20,000-record batch is ~10^5 new objects, and the
collections they triggered cost more than the unpickling itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import pickle
from collections.abc import Mapping, Sequence

from patronage.models.batch import PreparedBatch, Record, packed_for_redis, prepare_batch
from patronage.models.validate import Rules

# What a prepare process imports when it starts (fitpool.FitProcess.start).
PREPARE_MODULES = (__name__,)
# topics, partitions, offsets, keys, values: record i is the i-th of each
RecordColumns = tuple[list[str], list[int], list[int], list[bytes | None], list[bytes | None]]


def record_columns(records: Sequence[Record]) -> RecordColumns:
    """The records as they travel to the prepare process."""
    return (
        [r.topic for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.key for r in records],
        [r.value for r in records],
    )


def records_from(columns: RecordColumns) -> list[Record]:
    return list(map(Record._make, zip(*columns, strict=True)))


def prepare_packed(
    columns: RecordColumns,
    kinds: Mapping[str, str],
    rules: Rules,
    now_ms: int,
    zone: dt.tzinfo,
    epochs: Mapping[tuple[str, int], int],
    source_codes: Mapping[str, str] | None = None,
) -> bytes:
    """In the prepare process: `prepare_batch` of these records, pickled,
    with its records as their positions; with `source_codes` (each source
    label as the store codes it), each customer's deltas packed for Redis
    here rather than in the worker.

    Without collections, as in the worker (streams/collector.py): the
    batch's ~10^5 objects triggered collections that only walked them, a
    fifth of preparing's CPU (docs/benchmarks.md, "Helpers warm before the
    first batch…"); reference counting frees them when the batch is sent."""
    held = gc.isenabled()
    gc.disable()
    try:
        records = records_from(columns)
        batch = prepare_batch(records, kinds, rules, now_ms, zone, epochs)
        if source_codes is not None:
            packed_for_redis(batch, source_codes)
        return packed(batch, records)
    finally:
        if held:
            gc.enable()


def packed(batch: PreparedBatch, records: list[Record]) -> bytes:
    """`batch` pickled, with its records as positions in `records`."""
    position = {id(r): i for i, r in enumerate(records)}
    records_of = {c: [position[id(r)] for r in rs] for c, rs in batch.records_of.items()}
    without_records = dataclasses.replace(batch, records_of={})
    return pickle.dumps((without_records, records_of), protocol=pickle.HIGHEST_PROTOCOL)


def unpacked(blob: bytes, records: list[Record]) -> PreparedBatch:
    """In the worker: the prepared batch, its records the worker's own.
    Call with the collector held off (streams/ingest.py)."""
    batch, records_of = pickle.loads(blob)
    assert isinstance(batch, PreparedBatch)
    batch.records_of = {c: [records[i] for i in idx] for c, idx in records_of.items()}
    return batch
