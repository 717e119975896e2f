"""Batches prepared in the worker's prepare process (streams/preparing.py),
and the ingest loop that finishes one batch while the next is prepared there.

A real spawned process each time: what can go wrong is what pickling and a
second interpreter do to a batch (records matched back by position, models
and Decimals crossing), which a stand-in executor in this process would not
show. The loop is driven with an in-memory consumer and store, as the
pipeline's own unit tests are; the real consumer and Redis run it in the
fault suite (tests/integration/test_reliability.py, test_lapse_replay.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pickle
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from patronage.models.batch import PreparedBatch, Record, prepare_batch
from patronage.models.profile import PackedDeltas, packed_deltas, profile_view
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.fitpool import FitProcess
from patronage.streams.ingest import BatchIngest, _CommitOnRevoke
from patronage.streams.preparing import prepare_packed, record_columns, records_from, unpacked
from patronage.streams.settings import Settings
from tests.compare import assert_views_close
from tests.unit.test_pipeline import (
    START_MS,
    as_records,
    catch_up_batches,
    pipeline_for,
    receipt,
    reference_views,
)

NOW_MS = START_MS + 400 * DAY_MS


@pytest.fixture(scope="module", params=[1, 2], ids=["one prepare process", "two"])
def process(request: pytest.FixtureRequest) -> Iterator[FitProcess]:
    """One prepare process, or two (as many batches prepared ahead)."""
    helper = FitProcess(interval_s=0.2, role="prepare", processes=request.param)
    yield helper
    helper.shutdown()


def shop_records(settings: Settings) -> list[Record]:
    """A simulated shop's history with what real producers also send: a
    receipt with one unusable line (the rest counts), broken JSON, a lone
    surrogate, an unknown topic, a record without a value."""
    events, _ = generate(customers=40, days=120, seed=17, start_ms=START_MS)
    records = as_records(events, settings.partitions)
    odd_line = receipt("c-odd-line", "r-odd", START_MS + DAY_MS)
    odd_line["items"].append({"sku": "2000000000015", "quantity": "zwei", "unit_price": "1,99"})
    records += [
        Record("store-receipts", 0, 90_000, b"c-odd-line", json.dumps(odd_line).encode()),
        Record("purchases", 1, 90_000, b"x", b'{"event_id": "broken", "ts": '),
        Record("clicks", 2, 90_000, b"x", "\ud800".encode("utf-8", "surrogatepass")),
        Record("no-such-topic", 0, 5, None, b"{}"),
        Record("clicks", 3, 90_000, None, None),
    ]
    return records


def test_records_travel_to_the_prepare_process_unchanged() -> None:
    records = shop_records(Settings())
    sent = pickle.dumps(record_columns(records), protocol=pickle.HIGHEST_PROTOCOL)
    assert records_from(pickle.loads(sent)) == records


def test_a_batch_is_prepared_without_collections() -> None:
    """The prepare process collected while it prepared: a 20,000-record
    batch's ~10^5 objects set off collections that only walked them, a
    fifth of preparing's CPU (docs/benchmarks.md). None during the call
    here (a batch of a few thousand objects sets off several with the
    collector on), and the collector on again after it."""
    import gc

    settings = Settings()
    columns = record_columns(shop_records(settings) * 3)
    args = (settings.input_topics, settings.rules, NOW_MS, settings.zone, {})
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.enable()
    gc.callbacks.append(seen)
    try:
        prepare_packed(columns, *args)
        during = len(collections)  # (allocating here could set one off)
        enabled_after = gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
        if not was_enabled:
            gc.disable()
    assert during == 0, collections
    assert enabled_after


def test_a_batch_prepared_there_equals_one_prepared_here(process: FitProcess) -> None:
    settings = Settings()
    records = shop_records(settings)
    args = (settings.input_topics, settings.rules, NOW_MS, settings.zone, {("clicks", 2): 3})
    here = prepare_batch(records, *args)
    blob = asyncio.run(process.run(prepare_packed, record_columns(records), *args))
    there = unpacked(blob, records)

    assert isinstance(there, PreparedBatch)
    assert there.by_customer == here.by_customer
    assert there.dead_letters == here.dead_letters
    assert len(there.dead_letters) >= 5  # four records and one receipt line
    for name in ("accepted", "rejected", "corrected", "lines_dropped", "max_event_ts"):
        assert getattr(there, name) == getattr(here, name), name
    assert there.partition_of == here.partition_of
    assert there.newest == here.newest
    # The worker's own records, not copies: dead-lettering a refused
    # customer's records names their coordinates.
    assert there.records_of.keys() == here.records_of.keys()
    for customer_id, mine in here.records_of.items():
        assert all(a is b for a, b in zip(there.records_of[customer_id], mine, strict=True))


@dataclass
class Fetched:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class ListConsumer:
    """What `BatchIngest` asks of aiokafka's consumer, serving fetches from a list."""

    def __init__(self, fetches: list[list[Record]], partitions: set[TopicPartition]) -> None:
        self.fetches = fetches
        self.assigned = set(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.fetches:
            return {}
        fetched: dict[Any, list[Any]] = {}
        for r in self.fetches.pop(0):
            tp = TopicPartition(r.topic, r.partition)
            fetched.setdefault(tp, []).append(Fetched(*r))
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


def every_partition(settings: Settings) -> set[TopicPartition]:
    return {TopicPartition(t, p) for t in settings.input_topics for p in range(settings.partitions)}


def drain(
    ingest: BatchIngest, consumer: ListConsumer, between: Any = None
) -> list[tuple[int, int]]:
    """Run the loop until the fetches and the batches prepared ahead are
    done; `between(step, ahead)` runs after each step. Returns, per step,
    the records fetched and how many batches were left prepared ahead."""
    steps = []

    async def run() -> None:
        ahead: list[Any] = []
        step = 0
        while consumer.fetches or ahead:
            size = len(consumer.fetches[0]) if consumer.fetches else 0
            ahead = await ingest._fetch_and_process(consumer, 0, ahead)  # type: ignore[arg-type]
            steps.append((size, len(ahead)))
            if between is not None:
                await between(step, ahead)
            step += 1

    asyncio.run(run())
    return steps


def test_a_backlog_drained_through_the_prepare_process_as_without_it(
    process: FitProcess,
) -> None:
    """Large fetches are prepared there while the one before is finished
    here; small ones here. Out-of-order catch-up with a redelivery and bad
    records, on the event clock: every profile, dead letter and lapse alert
    is what the pipeline gives batch after batch, and the offsets applied
    reach the end of every partition."""
    settings = Settings(lapse_clock="event", prepare_process_min_records=150)
    records = shop_records(settings)
    fetches = catch_up_batches(records, random.Random(3))
    sequential, sequential_store = pipeline_for(settings, NOW_MS)
    sequential.test([[r for r in f if r.topic in settings.input_topics] for f in fetches])
    pipe, store = pipeline_for(settings, NOW_MS)
    consumer = ListConsumer([list(f) for f in fetches], every_partition(settings))
    pipe.prepare_process = process
    ingest = BatchIngest(settings, pipe)
    steps = drain(ingest, consumer)

    assert any(ahead for _, ahead in steps) and not all(ahead for _, ahead in steps[:-1])
    # As many ahead as there are processes, never more.
    assert max(ahead for _, ahead in steps) == process.processes
    large = sum(1 for size, _ in steps if size >= settings.prepare_process_min_records)
    assert pipe.stats.counters["batches_prepared_in_process"] == large
    assert pipe.stats.counters["batches_prepared_in_worker"] >= 1
    assert store.states.keys() == sequential_store.states.keys()
    for customer_id, state in sequential_store.states.items():
        assert store.states[customer_id].fields == state.fields, customer_id
    for topic in ("events-dlq", "lapse-alerts", "segment-changes"):
        got = pipe.producer.on(topic)  # type: ignore[attr-defined]
        assert got == sequential.producer.on(topic), topic  # type: ignore[attr-defined]
    letters = pipe.producer.on("events-dlq")  # type: ignore[attr-defined]
    assert {(d["source_topic"], d["offset"]) for d in letters} >= {
        ("purchases", 90_000),
        ("clicks", 90_000),
        ("store-receipts", 90_000),
    }
    # Where the consumer's position is: after each partition's last fetched record.
    ends = {
        TopicPartition(r.topic, r.partition): r.offset + 1
        for fetch in fetches
        for r in fetch
        if r.topic in settings.input_topics
    }
    assert ingest.applied == ends


def test_batches_are_finished_in_the_order_they_were_fetched(process: FitProcess) -> None:
    """A large fetch prepared ahead and a small one after it, of the same
    partitions: finished the other way round, the store would take the
    large one's older offsets for redeliveries and drop them."""
    settings = Settings(lapse_clock="event", prepare_process_min_records=150)
    events, _ = generate(customers=20, days=90, seed=8, start_ms=START_MS)
    records = as_records(events, 1)
    fetches, start = [], 0
    for size in itertools.cycle((200, 20)):
        if start >= len(records):
            break
        fetches.append(records[start : start + size])
        start += size
    sequential, sequential_store = pipeline_for(settings, NOW_MS)
    sequential.test(fetches)
    pipe, store = pipeline_for(settings, NOW_MS)
    partitions = {TopicPartition(t, 0) for t in settings.input_topics}
    pipe.prepare_process = process
    drain(BatchIngest(settings, pipe), ListConsumer([list(f) for f in fetches], partitions))

    assert pipe.stats.counters["duplicate_offsets"] == 0
    assert pipe.stats.counters["applied"] == sequential.stats.counters["applied"]
    for customer_id, state in sequential_store.states.items():
        # Batched differently, decayed sums may differ in the last bit.
        want = profile_view(customer_id, state.fields)
        assert_views_close(profile_view(customer_id, store.states[customer_id].fields), want)


@pytest.mark.parametrize("keeps_all", [True, False], ids=["same partitions back", "one given away"])
def test_a_rebalance_while_a_batch_is_prepared_ahead(process: FitProcess, keeps_all: bool) -> None:
    """Partitions revoked between a batch's preparing and its finishing: what
    is still owned is prepared again here and applied; what was given away
    is neither applied nor marked applied (the new owner reads it again from
    the committed offset)."""
    settings = Settings(lapse_clock="event", prepare_process_min_records=1)
    events, _ = generate(customers=30, days=60, seed=5, start_ms=START_MS)
    records = as_records(events, 2)
    fetches = [records[i : i + 200] for i in range(0, len(records), 200)]
    partitions = {TopicPartition(t, p) for t in settings.input_topics for p in range(2)}
    consumer = ListConsumer([list(f) for f in fetches], partitions)
    pipe, store = pipeline_for(settings, NOW_MS)
    pipe.prepare_process = process
    ingest = BatchIngest(settings, pipe)
    listener = _CommitOnRevoke(ingest)
    given_away = {tp for tp in partitions if tp.partition == 1}
    rebalanced_at = 2

    async def rebalance(step: int, ahead: Any) -> None:
        if step != rebalanced_at:
            return
        assert ahead
        await listener.on_partitions_revoked(set(partitions))
        if not keeps_all:
            consumer.assigned -= given_away
            # From here on the new owner gets partition 1's records.
            for fetch in consumer.fetches:
                fetch[:] = [r for r in fetch if r.partition != 1]
        await listener.on_partitions_assigned(consumer.assigned)

    drain(ingest, consumer, rebalance)

    # Finished before the rebalance: the fetches before those prepared ahead
    # (one a prepare process).
    finished = rebalanced_at + 1 - process.processes
    applied_before = {r for fetch in fetches[:finished] for r in fetch}
    kept = [r for r in records if keeps_all or r.partition == 0 or r in applied_before]
    expected = reference_views(kept, settings)
    assert set(store.states) == set(expected)
    for customer_id, view in expected.items():
        assert_views_close(profile_view(customer_id, store.states[customer_id].fields), view)
    if keeps_all:
        after = {TopicPartition(r.topic, r.partition) for f in fetches[finished:] for r in f}
        assert ingest.applied.keys() == after
    else:
        assert not ingest.applied.keys() & given_away


def test_a_prepare_process_that_fails_leaves_the_batch_to_the_worker(
    process: FitProcess,
) -> None:
    """Twice dead (or a batch that will not pickle): the same batch is
    prepared in the worker, and counted."""
    settings = Settings(prepare_process_min_records=1)
    records = shop_records(settings)
    pipe, store = pipeline_for(settings, NOW_MS)
    broken = FitProcess(role="prepare")
    broken.shutdown()  # every run now fails, and so does the one retry
    pipe.prepare_process = broken

    async def run() -> None:
        task = await pipe.prepare_in(records, ingest_log())
        await pipe.process_prepared(task)

    asyncio.run(run())
    assert pipe.stats.counters["batches_prepared_in_worker_after_failure"] == 1
    inputs = [r for r in records if r.topic in settings.input_topics]
    assert set(store.states) == set(reference_views(inputs, settings))


def test_a_batch_packed_there_is_what_the_store_would_pack_here(process: FitProcess) -> None:
    """Given the store's source codes, each customer's deltas come back
    packed: the bytes the store packs from the objects, and the earliest
    activity and order the worker still reads of them."""
    settings = Settings()
    records = shop_records(settings)
    epochs = {("clicks", 2): 3}
    args = (settings.input_topics, settings.rules, NOW_MS, settings.zone, epochs)
    here = prepare_batch(records, *args)
    labels = {d.source for deltas in here.by_customer.values() for d in deltas}
    codes = {label: f"{i}:{label.partition(':')[2]}" for i, label in enumerate(sorted(labels))}
    blob = asyncio.run(process.run(prepare_packed, record_columns(records), *args, codes))
    there = unpacked(blob, records)

    assert there.by_customer.keys() == here.by_customer.keys()
    assert "clicks:2#e3" in labels
    buyers = 0
    for customer_id, deltas in here.by_customer.items():
        assert isinstance(deltas, list)
        got = there.by_customer[customer_id]
        assert isinstance(got, PackedDeltas)
        assert got.packed == packed_deltas(deltas, codes)
        activity = [d.ts for d in deltas if d.kind != "attributes"]
        assert got.first_activity == (min(activity) if activity else None)
        orders = [d.ts for d in deltas if d.kind == "order" and d.basket > 0]
        assert got.first_order == (float(min(orders)) if orders else None)
        buyers += bool(orders)
    assert buyers >= 10
    assert there.dead_letters == here.dead_letters


def ingest_log() -> Any:
    from patronage.streams.memory import StaticLog

    return StaticLog()
