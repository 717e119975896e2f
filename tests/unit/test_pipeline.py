"""The whole pipeline, synchronously, with in-memory I/O: events in, profiles
and output events out (no Faust, no Kafka, no Redis).

The integration tiers run the same Pipeline on real Kafka and Redis; here a
change to the batch path (validation, dead letters, sources, lapse alerts,
scoring, erasure) is exercised in a second.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from typing import Any

import pytest

from patronage.models.batch import Record
from patronage.models.profile import fold, judged_version, profile_view, to_delta
from patronage.models.segments import SegmentTrainer
from patronage.models.simulate import generate
from patronage.models.sources import source_label
from patronage.models.timeunits import DAY_MS
from patronage.models.validate import Accepted, validate
from patronage.streams.memory import (
    MemoryModelStore,
    MemoryProfileStore,
    RecordingProducer,
    StaticLog,
)
from patronage.streams.pipeline import Pipeline
from patronage.streams.segmenting import partition_for, vectors_in
from patronage.streams.settings import Settings
from tests.compare import assert_views_close

START_MS = 1_767_225_600_000  # 2026-01-01
KIND_TOPIC = {
    "click": "clicks",
    "purchase": "purchases",
    "store_receipt": "store-receipts",
    "customer_attributes": "customer-attributes",
}


@pytest.fixture(autouse=True)
def _vectors_sent_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read what the learner is sent after each batch; how the
    vectors gather between batches is tests/unit/test_learner_vectors.py's."""
    monkeypatch.setenv("PATRONAGE_SEGMENT_FEATURES_INTERVAL_S", "0")


def pipeline_for(settings: Settings, now_ms: int) -> tuple[Pipeline, MemoryProfileStore]:
    store = MemoryProfileStore(settings.profile_config)
    producer = RecordingProducer()
    pipe = Pipeline(settings, store, MemoryModelStore(), producer, clock=lambda: now_ms / 1000)
    return pipe, store


def as_records(events: list[dict[str, Any]], partitions: int) -> list[Record]:
    """Events as Kafka would deliver them: keyed by customer, offsets per partition."""
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for event in events:
        topic = KIND_TOPIC[event["type"]]
        partition = partition_for(event["customer_id"], partitions)
        offset = offsets.get((topic, partition), -1) + 1
        offsets[(topic, partition)] = offset
        value = json.dumps(event).encode()
        records.append(Record(topic, partition, offset, event["customer_id"].encode(), value))
    return records


def catch_up_batches(records: list[Record], rng: random.Random) -> list[list[Record]]:
    """A backlog drained after downtime: partitions interleaved in chunks, out
    of event-time order across partitions, one chunk redelivered."""
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)
    chunks = []
    for rows in by_partition.values():
        start = 0
        while start < len(rows):
            size = rng.randint(20, 300)
            chunks.append(rows[start : start + size])
            start += size
    rng.shuffle(chunks)
    chunks.sort(key=lambda rows: rows[0].offset)  # each partition in offset order
    chunks.insert(len(chunks) // 2, chunks[len(chunks) // 3])  # a redelivery
    return chunks


def reference_views(records: list[Record], settings: Settings) -> dict[str, dict[str, object]]:
    """Each customer's profile folded straight from the validated events, in
    delivery order, outside the pipeline."""
    deltas: dict[str, list[Any]] = {}
    for record in records:
        kind = settings.input_topics[record.topic]
        outcome = validate(record.value or b"", kind, START_MS + 400 * DAY_MS, settings.rules)  # type: ignore[arg-type]
        if not isinstance(outcome, Accepted):
            continue
        src = source_label(record.topic, record.partition, 0)
        delta = to_delta(
            outcome.event, outcome.ts_ms, src, record.offset, settings.rules.currencies
        )
        deltas.setdefault(outcome.event.customer_id, []).append(delta)
    cfg = settings.profile_config
    return {cid: profile_view(cid, fold(ds, cfg).fields) for cid, ds in deltas.items()}


def test_a_backlog_drained_out_of_order_gives_the_reference_profiles() -> None:
    settings = Settings(lapse_clock="event")
    events, _ = generate(customers=60, days=200, seed=7, start_ms=START_MS)
    records = as_records(events, settings.partitions)
    bad = [
        Record("purchases", 0, 10_000_000, b"x", b'{"event_id": "broken", "ts": '),
        Record("clicks", 1, 10_000_000, b"x", "\ud800".encode("utf-8", "surrogatepass")),
    ]
    pipe, store = pipeline_for(settings, START_MS + 400 * DAY_MS)
    batches = catch_up_batches(records, random.Random(3))
    batches[5] = batches[5] + bad
    pipe.test(batches)

    expected = reference_views(records, settings)
    assert set(store.states) == set(expected)
    for customer_id, view in expected.items():
        got = profile_view(customer_id, store.states[customer_id].fields)
        assert_views_close(got, view)
    producer = pipe.producer
    assert isinstance(producer, RecordingProducer)
    letters = producer.on("events-dlq")
    assert sorted(letter["offset"] for letter in letters) == [10_000_000, 10_000_000]
    assert all(letter["reason"] for letter in letters)
    assert pipe.stats.counters["duplicate_offsets"] == len(batches[len(batches) // 2])
    assert pipe.stats.counters["applied"] == sum(
        int(v["events_applied"]) for v in expected.values()
    )  # type: ignore[call-overload]


def test_a_regular_who_stops_gets_one_lapse_alert_and_one_reactivation() -> None:
    """Live traffic: the wall clock follows the events, so the lapse is
    decided by the time that passes while another customer keeps buying."""
    settings = Settings(lapse_clock="wall")
    events = []
    for week in range(20):
        if 12 <= week < 18:
            continue  # six weeks away
        for customer in ("regular", "steady"):
            ts = START_MS + week * 7 * DAY_MS + (3_600_000 if customer == "steady" else 0)
            events.append(receipt(customer, f"{customer}-{week}", ts))
    for week in range(12, 18):  # another customer keeps the event clock moving
        events.append(receipt("steady", f"steady-{week}", START_MS + week * 7 * DAY_MS))
    records = as_records(sorted(events, key=lambda e: e["ts"]), 1)
    now = [START_MS]
    store = MemoryProfileStore(settings.profile_config)
    producer = RecordingProducer()
    pipe = Pipeline(settings, store, MemoryModelStore(), producer, clock=lambda: now[0] / 1000)

    async def live() -> None:
        for record in records + records[:7]:  # the first week redelivered at the end
            now[0] = max(now[0], json.loads(record.value or b"")["ts"] + 60_000)
            await pipe.process([record], StaticLog())
            await pipe.sweeper.sweep({0})

    asyncio.run(live())

    producer = pipe.producer
    assert isinstance(producer, RecordingProducer)
    alerts = [a for a in producer.on("lapse-alerts") if a["customer_id"] == "regular"]
    assert [a["kind"] for a in alerts] == ["lapsed", "reactivated"]
    assert len({a["event_id"] for a in alerts}) == 2


def shop_of_80_drained(
    settings: Settings,
) -> tuple[Pipeline, MemoryProfileStore, RecordingProducer]:
    """120 days of a simulated shop's 80 customers through the pipeline."""
    events, _ = generate(customers=80, days=120, seed=11, start_ms=START_MS)
    records = as_records(events, settings.partitions)
    pipe, store = pipeline_for(settings, START_MS + 121 * DAY_MS)
    pipe.test([records[i : i + 400] for i in range(0, len(records), 400)])
    assert isinstance(pipe.producer, RecordingProducer)
    return pipe, store, pipe.producer


def promoting_at_every_refit(**extra: Any) -> Settings:
    """A model from 50 vectors, and every later refit promoted (no minimum
    shift) once half a second has passed on the learner's clock."""
    return Settings(
        segment_warmup=50,
        segment_warmup_days=0,
        segment_promote_min_shift=0,
        segment_promote_interval_s=0.5,
        **extra,
    )


def a_second_per_call(pipe: Pipeline) -> None:
    """The learner's clock advances a second each time it is read."""
    ticks = iter(range(10**6))
    pipe.learner.clock = lambda: float(next(ticks))


def test_a_promoted_model_segments_every_owned_customer() -> None:
    settings = Settings(segment_warmup=50, segment_learn_sample=1.0)
    pipe, store, producer = shop_of_80_drained(settings)
    vectors = vectors_in(producer.on("segment-features"))
    assert len(vectors) >= 100

    async def learn_and_refresh() -> None:
        model = await pipe.learner.learn(vectors)
        assert model is not None and model.version == 1
        await pipe.refresh_model(set(range(settings.partitions)))
        assert pipe.rescoring is not None
        await pipe.rescoring

    asyncio.run(learn_and_refresh())
    changes = [c for c in producer.on("segment-changes") if c["kind"] == "segment"]
    assert {c["customer_id"] for c in changes} == set(store.states)
    assert {c["model_version"] for c in changes} == {1}
    assert all(c["previous_segment"] is None and c["segment_label"] for c in changes)
    assert all(store.states[c].fields["segment_version"] == "1" for c in store.states)


def test_after_a_promotion_only_moved_scores_are_written_and_the_pass_records_the_rest() -> None:
    """Neither a batch nor the re-scoring pass rewrites a profile only to
    record a newer model: each writes those whose segment or RFM scores move,
    and the pass records each partition it judged whole, so every profile
    shows the newer version once the pass is over."""
    settings = promoting_at_every_refit(segment_learn_sample=1.0)
    pipe, store, producer = shop_of_80_drained(settings)
    models = pipe.segmenter.models
    vectors = vectors_in(producer.on("segment-features"))
    a_second_per_call(pipe)
    owned = set(range(settings.partitions))

    async def promote_and_pass() -> None:
        assert await pipe.learner.learn(vectors) is not None
        await pipe.refresh_model(owned)
        assert pipe.rescoring is not None
        await pipe.rescoring

    asyncio.run(promote_and_pass())
    assert {s.fields["segment_version"] for s in store.states.values()} == {"1"}
    before = {c: dict(s.fields) for c, s in store.states.items()}

    async def promote_only() -> None:
        assert await pipe.learner.learn(vectors[:5]) is not None
        assert await pipe.segmenter.refresh()  # version 2, no pass yet

    asyncio.run(promote_only())
    sent = len(producer.sent)
    events, _ = generate(customers=80, days=120, seed=11, start_ms=START_MS)
    records = as_records(events, settings.partitions)
    pipe.test([records[i : i + 400] for i in range(0, len(records), 400)])  # redelivered
    changes = [json.loads(v) for t, _, v in producer.sent[sent:] if t == "segment-changes"]
    moved = {c["customer_id"] for c in changes if c["kind"] == "segment"}
    rfm = ("rfm_r", "rfm_f", "rfm_m")

    def stamped(version: str) -> set[str]:
        return {c for c, s in store.states.items() if s.fields["segment_version"] == version}

    def rescored(since: dict[str, dict[str, Any]]) -> set[str]:
        return {
            c for c in store.states if any(store.states[c].fields[f] != since[c][f] for f in rfm)
        }

    assert stamped("2") == moved | rescored(before)
    assert len(stamped("2")) < len(store.states)  # the case this test is about occurred
    # ... and the pass judges everyone with version 2, writing only moves
    after_batches = {c: dict(s.fields) for c, s in store.states.items()}
    sent = len(producer.sent)
    asyncio.run(pipe.segmenter.rescore_partitions(owned, START_MS + 121 * DAY_MS, pipe.send))
    changes = [json.loads(v) for t, _, v in producer.sent[sent:] if t == "segment-changes"]
    moved_by_pass = {c["customer_id"] for c in changes if c["kind"] == "segment"}
    rewritten = {c for c, s in store.states.items() if s.fields != after_batches[c]}
    assert rewritten == moved_by_pass | rescored(after_batches)
    assert stamped("1")  # left as they were: their scores stand under version 2
    floor = asyncio.run(models.judged_floor())
    assert floor == 2
    assert {judged_version(s.fields, floor) for s in store.states.values()} == {2}
    view = profile_view("c", store.states[min(stamped("1"))].fields, floor)
    assert view["segment_model_version"] == 2


def test_erasure_removes_the_customer_and_confirms() -> None:
    settings = Settings()
    pipe, store = pipeline_for(settings, START_MS + DAY_MS)
    records = as_records([receipt("gone", "r1", START_MS), receipt("kept", "r2", START_MS)], 1)
    pipe.test([records])
    request = json.dumps({"customer_id": "gone", "request_id": "req-1"}).encode()
    asyncio_run(pipe.erase(Record("erasure-requests", 0, 0, b"gone", request)))
    asyncio_run(pipe.erase(Record("erasure-requests", 0, 1, b"?", b"not json")))
    assert set(store.states) == {"kept"}
    producer = pipe.producer
    assert isinstance(producer, RecordingProducer)
    [confirmation] = producer.on("erasure-confirmations")
    assert confirmation["request_id"] == "req-1" and confirmation["keys_removed"] >= 2
    [letter] = producer.on("events-dlq")
    assert letter["reason"].startswith("erasure request unusable")


def test_an_erased_customer_leaves_the_learners_sample_and_checkpoint() -> None:
    """The learner's sample keeps customers' feature vectors by id, and its
    checkpoint is stored in Redis: erasure tells the learner to drop them
    (on its own topic, acked before the confirmation), and the checkpoint is
    rewritten at once, not at the next promotion."""
    settings = Settings(segment_warmup=50, segment_learn_sample=1.0)
    pipe, store, producer = shop_of_80_drained(settings)
    assert asyncio.run(pipe.learner.learn(producer.on("segment-features"))) is not None
    models = pipe.learner.models
    assert isinstance(models, MemoryModelStore) and models.trainer is not None
    trainer = pipe.learner.trainer
    assert trainer is not None
    gone = sorted(trainer.sample.vectors)[0]
    assert f'"{gone}"' in models.trainer and gone in pipe.learner.histories.vectors
    sent = len(producer.sent)
    request = json.dumps({"customer_id": gone, "request_id": "req-7"}).encode()
    asyncio_run(pipe.erase(Record("erasure-requests", 0, 0, gone.encode(), request)))
    assert gone not in store.states
    topics = [t for t, _, _ in producer.sent[sent:]]
    assert topics.index("segment-features") < topics.index("erasure-confirmations")
    forget = [json.loads(v) for t, _, v in producer.sent[sent:] if t == "segment-features"]
    assert forget == [{"forget": [gone]}]
    asyncio.run(pipe.learner.learn(forget))
    assert gone not in trainer.sample.vectors and gone not in trainer.sample.rfm
    assert gone not in pipe.learner.histories.vectors
    assert f'"{gone}"' not in models.trainer
    assert gone not in SegmentTrainer.from_checkpoint(json.loads(models.trainer)).sample.vectors


def asyncio_run(awaitable: Any) -> None:
    async def run() -> None:
        await awaitable

    asyncio.run(run())


def receipt(customer: str, receipt_id: str, ts: int) -> dict[str, Any]:
    return {
        "type": "store_receipt",
        "event_id": f"ev-{receipt_id}",
        "customer_id": customer,
        "ts": ts,
        "store_id": "berlin-mitte-004",
        "receipt_id": receipt_id,
        "currency": "EUR",
        "items": [
            {"sku": "4006381333931", "category": "dairy", "quantity": 2, "unit_price": "1.19"},
            {"sku": "4311501645571", "category": "bakery", "quantity": "0.5", "unit_price": "3.8"},
        ],
        "total": "4.28",
        "payment_method": "girocard",
    }


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR")


def test_a_promotion_during_a_rescoring_pass_restarts_it_with_the_new_model() -> None:
    """Nobody is left on an older version, and the pass reads the owned
    partitions' members in slices."""
    settings = promoting_at_every_refit(segment_rescore_slice=10)
    pipe, store, producer = shop_of_80_drained(settings)
    vectors = vectors_in(producer.on("segment-features"))
    slices = []
    read = store.partition_members

    async def counting(partition: int, cursor: int, count: int) -> tuple[int, list[str]]:
        slices.append(partition)
        if len(slices) == 3:
            # A newer version lands while the pass is under way.
            assert await pipe.learner.learn(vectors[:5]) is not None
            assert await pipe.segmenter.refresh()
        return await read(partition, cursor, count)

    a_second_per_call(pipe)

    async def run() -> None:
        assert await pipe.learner.learn(vectors) is not None
        await pipe.refresh_model({0, 1, 2, 3})
        store.partition_members = counting  # type: ignore[method-assign]
        assert pipe.rescoring is not None
        await pipe.rescoring

    asyncio.run(run())
    owned = {c for c in store.states if partition_for(c, settings.partitions) in {0, 1, 2, 3}}
    assert pipe.segmenter.restarts == 1
    models = pipe.segmenter.models
    assert isinstance(models, MemoryModelStore)
    assert models.passes == dict.fromkeys(range(4), 2)  # each owned partition judged whole
    # ... so nobody owned is left as an older version had them: judged again
    # by version 2, nothing would change.
    now = asyncio.run(pipe.pass_now({0, 1, 2, 3}))
    owned_profiles = {c: store.states[c].fields for c in owned}
    assert asyncio.run(pipe.segmenter.score(owned_profiles, now)) == {}
    assert {store.states[c].fields["segment_version"] for c in owned} <= {"1", "2"}
    others = set(store.states) - owned
    assert all("segment_version" not in store.states[c].fields for c in others)
    assert set(slices) == {0, 1, 2, 3} and len(slices) > 8


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_rescoring_pass_keeps_to_its_share_of_the_time(share: float) -> None:
    """The pass rests after each slice: its own time is at most `share` of
    its length (a pass that only yielded took every idle moment of the loop
    and raised ingest latency with it, docs/benchmarks.md)."""
    settings = Settings(
        segment_warmup=50,
        segment_learn_sample=1.0,
        segment_rescore_slice=10,
        background_pass_share=share,
    )
    pipe, store, producer = shop_of_80_drained(settings)

    async def run() -> float:
        assert await pipe.learner.learn(producer.on("segment-features")) is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pipe.refresh_model(set(range(settings.partitions)))
        assert pipe.rescoring is not None
        assert await pipe.rescoring == len(store.states)
        return loop.time() - started

    took = asyncio.run(run())
    busy = pipe.segmenter.rescore_busy_s
    assert busy > 0 and pipe.segmenter.rescored == len(store.states)
    assert took >= 0.95 * busy / share
    assert {f.fields["segment_version"] for f in store.states.values()} == {"1"}


def test_a_rescoring_pass_yields_more_while_ingest_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pass's share follows ingest's load (pacing.pass_share): with input
    batches in hand most of the time it takes less than its setting; with
    none, its setting. `in_hand.busy_s` counts the time a batch was in hand."""
    import patronage.streams.segmenting as segmenting_module
    from patronage.streams.pacing import Pacer

    pacers: list[Pacer] = []

    class Recorded(Pacer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pacers.append(self)

    monkeypatch.setattr(segmenting_module, "Pacer", Recorded)
    settings = Settings(segment_warmup=50, segment_learn_sample=1.0, segment_rescore_slice=10)
    pipe, store, producer = shop_of_80_drained(settings)
    events, _ = generate(customers=5, days=10, seed=12, start_ms=START_MS + 121 * DAY_MS)
    batch = as_records(events, settings.partitions)
    apply = store.apply_batch

    async def slow_apply(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.02)  # a batch in hand, waiting on Redis
        return await apply(*args, **kwargs)

    store.apply_batch = slow_apply  # type: ignore[method-assign]

    async def run() -> tuple[float, float]:
        assert await pipe.learner.learn(producer.on("segment-features")) is not None
        before = pipe.in_hand.busy_s()
        for _ in range(3):
            await pipe.process(batch, StaticLog())
        counted = pipe.in_hand.busy_s() - before
        # Busy: batches back to back while the pass runs.
        await pipe.refresh_model(set(range(settings.partitions)))
        assert pipe.rescoring is not None
        while not pipe.rescoring.done():
            await pipe.process(batch, StaticLog())
        await pipe.rescoring
        idle = pipe.in_hand.busy_s()
        await asyncio.sleep(0.05)
        return counted, pipe.in_hand.busy_s() - idle

    counted, while_idle = asyncio.run(run())
    assert counted >= 3 * 0.02
    assert while_idle == 0.0
    (busy_pass,) = pacers
    assert busy_pass.shares and min(busy_pass.shares) < settings.background_pass_share

    # Idle ingest: a pass keeps its setting throughout.
    pacers.clear()
    owned = set(range(settings.partitions))
    segmenter = pipe.segmenter
    asyncio.run(
        segmenter.rescore_partitions(
            owned, 0.0, pipe.send, pipe.between_batches, pipe.in_hand.busy_s
        )
    )
    (idle_pass,) = pacers
    assert idle_pass.shares and set(idle_pass.shares) == {settings.background_pass_share}


def test_vectors_past_the_full_sample_are_not_sent_and_not_missed() -> None:
    """At a million customers nearly every update would be a message the
    learner throws away (its sample keeps the smallest id hashes). Once the
    promoted model carries the sample's cut-off, only customers at or below
    it are sent — and the learner ends with the samples it would have had
    from every vector."""
    from patronage.models.segments import customer_hash

    settings = Settings(segment_warmup=30, segment_warmup_days=0, segment_sample_customers=100)
    events, _ = generate(customers=200, days=120, seed=5, start_ms=START_MS)
    # Customers who arrive after the promotion (another population, renamed).
    newcomers, _ = generate(customers=150, days=60, seed=6, start_ms=START_MS + 60 * DAY_MS)
    for event in newcomers:
        event["customer_id"] = "n" + event["customer_id"]
    half = len(events) // 2
    records = as_records(
        events[:half] + sorted(events[half:] + newcomers, key=lambda e: e["ts"]),
        settings.partitions,
    )
    early, late = records[:half], records[half:]
    chunks = lambda rs: [rs[i : i + 400] for i in range(0, len(rs), 400)]  # noqa: E731

    def drained_first_half() -> tuple[Pipeline, RecordingProducer]:
        pipe, _ = pipeline_for(settings, START_MS + 121 * DAY_MS)
        pipe.test(chunks(early))
        assert isinstance(pipe.producer, RecordingProducer)
        return pipe, pipe.producer

    async def promote(pipe: Pipeline, producer: RecordingProducer) -> int:
        model = await pipe.learner.learn(producer.on("segment-features"))
        assert model is not None and model.sample_cutoff is not None
        await pipe.refresh_model(set(range(settings.partitions)))
        assert pipe.rescoring is not None
        await pipe.rescoring
        return model.sample_cutoff

    cut, cut_producer = drained_first_half()
    cutoff = asyncio.run(promote(cut, cut_producer))
    sent_before = len(cut_producer.sent)
    cut.test(chunks(late))
    sent = vectors_in(
        json.loads(v) for t, _, v in cut_producer.sent[sent_before:] if t == "segment-features"
    )

    # The same history and learner, never told the cut-off: it sends everything.
    full, full_producer = drained_first_half()
    asyncio.run(full.learner.learn(full_producer.on("segment-features")))

    ids = {v["id"] for v in sent}
    assert ids and all(customer_hash(c) <= cutoff for c in ids)
    updated = {r.key.decode() for r in late if r.key}
    assert len(ids) < len(updated)  # messages were saved

    # Lossless: a learner fed every late vector keeps the same customers.
    before = len(full_producer.sent)
    full.test(chunks(late))
    late_vectors = vectors_in(
        json.loads(v) for t, _, v in full_producer.sent[before:] if t == "segment-features"
    )
    assert len(late_vectors) > len(sent)
    asyncio.run(cut.learner.learn(sent))
    asyncio.run(full.learner.learn(late_vectors))
    assert cut.learner.trainer is not None and full.learner.trainer is not None
    assert set(cut.learner.trainer.sample.vectors) == set(full.learner.trainer.sample.vectors)
    assert set(cut.learner.histories.vectors) == set(full.learner.histories.vectors)


def test_at_risk_alerts_once_per_episode_and_tier_changes_on_updates() -> None:
    """Live traffic with fitted parameters: a weekly buyer who stops gets one
    `at_risk` alert at the moment p_alive crosses the threshold; when they
    buy again the episode ends and the next one is scheduled from the new
    purchase; a one-time buyer is never at risk. Redeliveries and repeated
    sweeps send nothing twice (ids), tiers are judged on every update."""
    from patronage.models.predict import at_risk_age
    from tests.unit.test_risk import FITTED

    settings = Settings(lapse_clock="wall", prediction_at_risk_threshold=0.3)
    week = 7 * DAY_MS
    events = [receipt("weekly", f"w-{n}", START_MS + n * week) for n in range(8)]
    events.append(receipt("weekly", "w-back", START_MS + 30 * week))  # back after 22 weeks
    events.append(receipt("once", "o-1", START_MS + week))
    # Someone keeps the clock moving (and is a regular, never at risk).
    events += [receipt("steady", f"s-{n}", START_MS + n * week + 3_600_000) for n in range(60)]
    records = as_records(sorted(events, key=lambda e: e["ts"]), 1)
    now = [START_MS]
    store = MemoryProfileStore(settings.profile_config)
    producer = RecordingProducer()
    models = MemoryModelStore()
    pipe = Pipeline(settings, store, models, producer, clock=lambda: now[0] / 1000)

    async def live() -> None:
        await models.save_parameters(FITTED)
        for record in records + records[:5]:  # the first weeks redelivered at the end
            now[0] = max(now[0], json.loads(record.value or b"")["ts"] + 60_000)
            await pipe.process([record], StaticLog())
            await pipe.sweeper.sweep({0})
            await pipe.sweeper.sweep({0})

    asyncio.run(live())

    def moment(orders: int, first: int, last: int) -> int:
        age = at_risk_age(FITTED.purchases, orders - 1, (last - first) / week, 0.3)
        assert age is not None
        return int(first + age * week)

    alerts = [a for a in producer.on("lapse-alerts") if a["kind"] == "at_risk"]
    last_first_run, back = START_MS + 7 * week, START_MS + 30 * week
    expected = {
        f"at_risk:weekly:{last_first_run}": moment(8, START_MS, last_first_run),
        # The return after 22 weeks ended that episode; the next one is
        # scheduled from the new purchase and passed before the end.
        f"at_risk:weekly:{back}": moment(9, START_MS, back),
    }
    steady_first, steady_last = START_MS + 3_600_000, START_MS + 59 * week + 3_600_000
    assert moment(60, steady_first, steady_last) > now[0]  # not yet at risk
    by_id = {a["event_id"]: a for a in alerts}
    assert len(by_id) == len(alerts), "an alert was sent twice"
    assert {i: ms_of(a["ts"]) for i, a in by_id.items()} == expected
    assert all(a["p_alive"] == pytest.approx(0.3, abs=1e-5) for a in alerts)
    assert {a["parameters_version"] for a in alerts} == {FITTED.version}
    weekly = store.states["weekly"].fields
    assert float(weekly["risk_episode"]) == back
    assert float(weekly["risk_decided"]) == back  # the open episode's start
    assert store.states["weekly"].risk_orders == ""  # every order judged
    # Nothing left to judge for the one-time buyer (never at risk).
    assert "once" not in store.risk[0]

    tiers = [c for c in producer.on("segment-changes") if c.get("kind") == "tier"]
    assert len({c["event_id"] for c in tiers}) == len(tiers)
    first_tiers = {c["customer_id"]: c for c in tiers if c["previous_tier"] is None}
    assert set(first_tiers) == {"weekly", "once", "steady"}
    for customer_id in ("weekly", "once", "steady"):
        mine = [c for c in tiers if c["customer_id"] == customer_id]
        # Each change starts from the tier the one before it ended in ...
        assert all(b["previous_tier"] == a["tier"] for a, b in itertools.pairwise(mine))
        # ... and the profile holds the last.
        assert store.states[customer_id].fields["value_tier"] == mine[-1]["tier"]


def ms_of(ts: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def test_a_rescoring_pass_runs_its_slices_between_input_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices of a re-scoring pass wait while an input batch is in hand
    (interleaved, a slice ran at every await of the batch and the batch
    waited for all of them) — but not for ever: a saturated worker still
    re-scores after BACKGROUND_PATIENCE_S."""
    import patronage.streams.pipeline as pipeline_module

    settings = Settings(segment_warmup=50, segment_learn_sample=1.0, segment_rescore_slice=10)
    pipe, store, producer = shop_of_80_drained(settings)
    events, _ = generate(customers=5, days=10, seed=12, start_ms=START_MS + 121 * DAY_MS)
    batch = as_records(events, settings.partitions)
    in_redis = asyncio.Event()
    apply = store.apply_batch

    async def held_apply(*args: Any, **kwargs: Any) -> Any:
        await in_redis.wait()  # the batch is in hand until the test lets it go
        return await apply(*args, **kwargs)

    store.apply_batch = held_apply  # type: ignore[method-assign]
    slices: list[bool] = []  # for each slice: was a batch in hand?
    read = store.partition_members

    async def recording(partition: int, cursor: int, count: int) -> tuple[int, list[str]]:
        slices.append(not batch_task.done())
        return await read(partition, cursor, count)

    async def run() -> None:
        nonlocal batch_task
        model = await pipe.learner.learn(producer.on("segment-features"))
        assert model is not None
        store.partition_members = recording  # type: ignore[method-assign]
        # Patient enough to see the wait (the default gives up after 50 ms).
        monkeypatch.setattr(pipeline_module, "BACKGROUND_PATIENCE_S", 5.0)
        batch_task = asyncio.create_task(pipe.process(batch, StaticLog()))
        await asyncio.sleep(0)
        await pipe.refresh_model(set(range(settings.partitions)))
        assert pipe.rescoring is not None
        await asyncio.sleep(0.2)
        assert slices == []  # nothing re-scored while the batch was in hand
        in_redis.set()
        await batch_task
        assert await pipe.rescoring > 0
        assert slices and not any(slices)

        # Patience: a batch held for ever does not stop a pass for ever.
        monkeypatch.setattr(pipeline_module, "BACKGROUND_PATIENCE_S", 0.05)
        in_redis.clear()
        batch_task = asyncio.create_task(pipe.process(batch, StaticLog()))
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await pipe.between_batches()
        assert 0.04 <= asyncio.get_running_loop().time() - started < 1.0
        assert not batch_task.done()
        in_redis.set()
        await batch_task

    batch_task: asyncio.Task[None] = None  # type: ignore[assignment]
    asyncio.run(run())


def test_a_sweep_right_after_a_batch_judges_none_of_its_customers_again() -> None:
    """Ingest writes each customer's due entry as an early bound (its
    earliest activity) and then moves it to when its own judging said: the
    sweep that follows judges nobody whose next decision lies weeks ahead
    (it judged every customer of every batch a second time, one Redis
    script call each, doubling the calls at live rates), and still finds
    every regular once they are overdue."""
    settings = Settings(lapse_clock="wall")
    customers = [f"regular-{i:03d}" for i in range(300)]
    events = [
        receipt(c, f"{c}-{week}", START_MS + week * 7 * DAY_MS + i * 1000)
        for week in range(12)
        for i, c in enumerate(customers)
    ]
    now = [START_MS + 12 * 7 * DAY_MS]
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(
        settings, store, MemoryModelStore(), RecordingProducer(), clock=lambda: now[0] / 1000
    )
    judged = pipe.sweeper.judged  # customers the sweeps judged, by queue

    async def run() -> tuple[int, int]:
        await pipe.process(as_records(events, 1), StaticLog())
        await pipe.sweeper.sweep({0})
        right_after = judged["lapse"]
        now[0] += 60 * DAY_MS  # every regular is now overdue
        await pipe.sweeper.sweep({0})
        return right_after, judged["lapse"] - right_after

    right_after, overdue = asyncio.run(run())
    assert (right_after, overdue) == (0, len(customers))
    lapsed = {a["customer_id"] for a in pipe.producer.on("lapse-alerts") if a["kind"] == "lapsed"}  # type: ignore[attr-defined]
    assert lapsed == set(customers)


def test_a_lapse_sweep_judges_in_slices_between_input_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sweep of 250 due customers judges them 100, 100, 50 (the sweep
    batch caps a partition's sweep), at-risk moments alike, and no slice
    starts while an input
    batch is in hand: one pipeline of a thousand judgements held Redis for
    tens of milliseconds, and the input batches behind it waited."""
    import patronage.streams.pipeline as pipeline_module

    # Patient enough to see the wait (the default gives up after 50 ms).
    monkeypatch.setattr(pipeline_module, "BACKGROUND_PATIENCE_S", 5.0)
    settings = Settings(lapse_clock="wall", lapse_sweep_batch=250, lapse_sweep_slice=100)
    customers = [f"regular-{i:03d}" for i in range(300)]
    events = [
        receipt(c, f"{c}-{week}", START_MS + week * 7 * DAY_MS + i * 1000)
        for week in range(12)
        for i, c in enumerate(customers)
    ]
    records = as_records(events, 1)
    now = [START_MS + 12 * 7 * DAY_MS]
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(
        settings, store, MemoryModelStore(), RecordingProducer(), clock=lambda: now[0] / 1000
    )
    late = as_records([receipt("late-shopper", "late-1", now[0])], 1)
    held = asyncio.Event()
    apply = store.apply_batch

    async def held_apply(*args: Any, **kwargs: Any) -> Any:
        await held.wait()
        return await apply(*args, **kwargs)

    slices: list[tuple[str, int, bool]] = []  # (queue, limit, batch in hand?) per slice
    due_customers = store.due_customers

    async def recording(partition: int, clock: float, limit: int, queue: Any = "lapse") -> Any:
        slices.append((queue, limit, not batch_task.done()))
        return await due_customers(partition, clock, limit, queue)

    async def run() -> None:
        nonlocal batch_task
        await pipe.process(records, StaticLog())
        now[0] += 60 * DAY_MS  # every regular is now overdue
        store.apply_batch = held_apply  # type: ignore[method-assign]
        store.due_customers = recording  # type: ignore[method-assign]
        batch_task = asyncio.create_task(pipe.process(late, StaticLog()))
        await asyncio.sleep(0)
        sweep = asyncio.create_task(pipe.sweeper.sweep({0}))
        await asyncio.sleep(0.2)
        assert slices == []  # nothing judged while the batch was in hand
        held.set()
        await batch_task
        assert await sweep == 2 * 250
        sizes = [(100, False), (100, False), (50, False)]
        assert slices == [("lapse", *s) for s in sizes] + [("risk", *s) for s in sizes]
        # The next sweep takes up where the batch cap stopped it.
        slices.clear()
        assert await pipe.sweeper.sweep({0}) >= 50
        assert slices[0] == ("lapse", 100, False)

    batch_task: asyncio.Task[None] = None  # type: ignore[assignment]
    asyncio.run(run())
    lapsed = {a["customer_id"] for a in pipe.producer.on("lapse-alerts") if a["kind"] == "lapsed"}  # type: ignore[attr-defined]
    assert lapsed == set(customers)


class HeldAcks(RecordingProducer):
    """Keeps what it is sent; its acks come only when the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[asyncio.Future[None]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        self.sent.append((topic, key, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append(ack)
        return ack

    def release(self) -> None:
        for ack in self.held:
            ack.set_result(None)
        self.held = []


def test_segment_and_tier_changes_are_stored_once_both_are_acked_in_one_write() -> None:
    """A newcomer's first segment and first value tier: both changes are on
    the topic before either is stored (a crash in between must not leave a
    stored decision whose change was never published), and the batch stores
    them with one write, not one per kind — its purchase's at-risk schedule
    in the same write, not a round trip of its own."""
    from tests.unit.test_risk import FITTED

    settings = Settings(segment_warmup=50, segment_learn_sample=1.0)
    pipe, store, producer = shop_of_80_drained(settings)
    writes: list[tuple[set[str], dict[int, dict[str, float]]]] = []
    store_scores = store.store_scores
    schedules: list[Any] = []
    schedule_risk = store.schedule_risk

    async def counted(batch: Any, risk_due: Any = None, lapse_due: Any = None) -> set[str]:
        writes.append((set(batch), {p: dict(d) for p, d in (risk_due or {}).items()}))
        return await store_scores(batch, risk_due, lapse_due)

    async def scheduled(moments: Any, keep_earlier: bool = False) -> None:
        schedules.append(moments)
        await schedule_risk(moments, keep_earlier)

    store.store_scores = counted  # type: ignore[method-assign]
    store.schedule_risk = scheduled  # type: ignore[method-assign]
    held = HeldAcks()
    pipe.producer = held
    record = as_records([receipt("newcomer", "n-1", START_MS + 120 * DAY_MS)], 1)[0]

    async def run() -> tuple[list[str], set[str]]:
        assert await pipe.learner.learn(vectors_in(producer.on("segment-features")))
        assert await pipe.segmenter.refresh()
        await pipe.parameters.save(FITTED)
        batch = asyncio.create_task(pipe.process([record], StaticLog()))
        for _ in range(200):  # the batch goes as far as it can without acks
            await asyncio.sleep(0)
        sent = sorted(c["kind"] for c in held.on("segment-changes"))
        stored = {"segment", "value_tier"} & set(store.states["newcomer"].fields)
        while not batch.done():
            held.release()
            await asyncio.sleep(0)
        await batch
        return sent, stored

    sent_while_held, stored_while_held = asyncio.run(run())
    assert sent_while_held == ["segment", "tier"]
    assert not stored_while_held
    receipt_ms = float(START_MS + 120 * DAY_MS)
    assert writes == [({"newcomer"}, {record.partition: {"newcomer": receipt_ms}})]
    assert schedules == []
    fields = store.states["newcomer"].fields
    assert "segment" in fields and "value_tier" in fields
