"""The batch path, with its I/O passed in: validate -> dead letters -> apply
-> lapse alerts -> segments, plus erasure, lapse sweeps and model refreshes.

`Pipeline` takes a profile store, a model store, a producer and a clock
(streams/types.py); Faust only wires it to topics, timers and the web
(streams/worker.py). With the in-memory store (streams/memory.py) the whole
pipeline runs synchronously in a unit test: `Pipeline.test(batches)`.

Ordering is what makes it effectively once: dead letters are acked by Kafka
before the batch's offsets can be committed; lapse alerts and segment
changes carry deterministic ids, so a retry after a failure re-sends
duplicates consumers can drop, never gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import operator
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from patronage.models.batch import PreparedBatch, Record, dead_letter, prepare_batch
from patronage.models.clock import with_batch
from patronage.models.features import category_spend, rfm_inputs
from patronage.models.identity import Person, PersonChange, holds_for_person
from patronage.models.lapse import finding_from_json, to_alert
from patronage.models.profile import first_order
from patronage.models.segments import customer_hash
from patronage.models.sources import SourceState, observe, source_label
from patronage.models.validate import Rules
from patronage.streams.collector import collector_held
from patronage.streams.fitpool import FitProcess
from patronage.streams.identities import Resolver, Stitcher
from patronage.streams.metrics import WorkerMetrics
from patronage.streams.pacing import BatchesInHand
from patronage.streams.predicting import ParameterStore, Predictor
from patronage.streams.preparing import prepare_packed, record_columns, unpacked
from patronage.streams.retry import Retry
from patronage.streams.scored import ScoreWrites
from patronage.streams.segmenting import (
    FEATURE_BATCH,
    Learner,
    Segmenter,
    feature_messages,
    feature_vector,
    forget_message,
)
from patronage.streams.settings import Settings
from patronage.streams.sweeper import LapseSweeper
from patronage.streams.types import (
    ApplyResult,
    InputLog,
    ModelStoreT,
    Producer,
    ProfileStoreT,
)

log = logging.getLogger("patronage.worker")
# prepare_batch's arguments after the records: kinds, rules, now, zone, epochs.
PrepareArgs = tuple[Mapping[str, str], Rules, int, dt.tzinfo, dict[tuple[str, int], int]]
# How long a background slice (re-scoring, sweeps) waits for a gap between
# input batches before it runs anyway. At 0.5 s a busy worker, which always
# has a batch in hand, re-scored 100 customers/s: a pass over 20,000 took
# the whole of a 60 s benchmark run. The passes' share of the worker's time
# is kept by their rests (pacing.py); this wait only keeps a slice out of
# a batch that is about to finish.
BACKGROUND_PATIENCE_S = 0.05
PERSONS_AHEAD = "persons ahead"  # the task asking for a batch's people during its apply


@dataclass
class PipelineStats:
    """What the pipeline counted (read by /metrics and the dashboard)."""

    counters: Counter[str] = field(default_factory=Counter)
    consumed: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    corrected: Counter[tuple[str, str]] = field(default_factory=Counter)
    lines_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    # (topic, partition) -> newest event time applied, epoch ms
    last_event_ts: dict[tuple[str, int], int] = field(default_factory=dict)

    def record(self, records: list[Record], batch: PreparedBatch, result: ApplyResult) -> None:
        self.consumed.update(map(_topic, records))  # (counted in C)
        self.counters["applied"] += result.applied
        self.counters["duplicate_offsets"] += result.duplicate_offsets
        self.counters["duplicate_events"] += result.duplicate_events
        self.rejected.update(batch.rejected)
        self.corrected.update(batch.corrected)
        self.lines_dropped.update(batch.lines_dropped)
        for tp, ts in batch.max_event_ts.items():
            self.last_event_ts[tp] = max(self.last_event_ts.get(tp, 0), ts)


_topic = operator.attrgetter("topic")
_topic_partition = operator.attrgetter("topic", "partition")
_offset = operator.attrgetter("offset")


@dataclass(frozen=True)
class PreparedWork:
    """A batch validated and turned into deltas, waiting for `Pipeline.finish`."""

    records: list[Record]
    batch: PreparedBatch
    sources: dict[tuple[str, int], SourceState]
    now_ms: int


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: ProfileStoreT,
        models: ModelStoreT,
        producer: Producer,
        clock: Callable[[], float] = time.time,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.clock = clock
        self.stats = PipelineStats()
        self.metrics = metrics or WorkerMetrics()
        self.in_hand = BatchesInHand()  # background passes yield to them (pacing.py)
        self.retry = Retry(settings.redis_retry_max_s, self.stats.counters, store.ensure_scripts)
        self.segmenter = Segmenter(settings, models, store)
        self.parameters = ParameterStore(models)
        self.resolver = Resolver(store, settings.profile_config, settings.identity_cache_size)
        self.predictor = Predictor(
            settings,
            store,
            self.parameters,
            self.send,
            self.pass_now,
            self.resolver.activity if settings.identity_stitching else None,
            ingest_busy=self.in_hand.busy_s,
        )
        self.learner = Learner(settings, models, clock)
        self.sweeper = LapseSweeper(
            store,
            settings.lapse_clock,
            settings.lapse_sweep_batch,
            settings.lapse_event_lateness_s,
            settings.lapse_input_idle_s,
            settings.activity_topics,
            self.send_findings,
            wall=clock,
            also=self.predictor.sweep_partition,
            slice_size=settings.lapse_sweep_slice,
            between_slices=self.between_batches,
        )
        self.stitcher = Stitcher(
            settings, store, self.send, self._send_dead_letters, self._score_people
        )
        self.rescoring: asyncio.Task[int] | None = None
        # Validates large batches while the worker finishes the one before
        # (streams/preparing.py); none in tests and with the setting off.
        self.prepare_process: FitProcess | None = None
        # Sources kept between batches while the assignment stands.
        self._sources_seen: dict[tuple[str, int], SourceState] = {}
        self._sources_assignment: frozenset[tuple[str, int]] = frozenset()
        # The learner's vectors not yet sent, and since when (clock seconds).
        self._vectors: list[dict[str, Any]] = []
        self._vectors_since = 0.0
        # Held while vectors or a forget go out, so a forget never lands
        # between the messages of vectors taken before it.
        self._features_sending = asyncio.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        return await self.producer.send(topic, key, value)

    async def process(self, records: list[Record], inputs: InputLog) -> None:
        """One batch of input records, from validation to segment scoring."""
        await self.process_prepared(self.prepare(records, inputs))

    async def process_prepared(self, work: Awaitable[PreparedWork]) -> None:
        """A batch whose preparing `work` is (or is to be) done, finished."""
        self.in_hand.enter()
        try:
            await self.finish(await work)
        finally:
            self.in_hand.leave()

    async def between_batches(self) -> None:
        """Wait until no input batch is in hand — at most
        BACKGROUND_PATIENCE_S, so a saturated worker still gets on with it.
        A re-scoring pass runs its slices here: interleaved with a batch, it
        ran at every one of the batch's awaits and added its whole length to
        that batch's latency."""
        if self.in_hand.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.in_hand.none.wait(), BACKGROUND_PATIENCE_S)

    async def prepare(self, records: list[Record], inputs: InputLog) -> PreparedWork:
        """Validation and delta building: Python only (the sources are cached
        while the assignment stands). Done here for the next batch while
        Redis applied this one, it did not pay (one thread); `prepare_in`
        does it in the prepare process (docs/benchmarks.md). Batches must be
        finished in the order they were prepared."""
        sources, now_ms, args = await self._prepare_args(records, inputs)
        batch = prepare_batch(records, *args)
        self.stats.counters["batches_prepared_in_worker"] += 1
        return PreparedWork(records, batch, sources, now_ms)

    async def prepare_in(
        self, records: list[Record], inputs: InputLog
    ) -> asyncio.Task[PreparedWork]:
        """`prepare` in the worker's prepare process (streams/preparing.py):
        the task is done when the batch is back. Started before the batch
        before it is finished, it must be finished after that one."""
        sources, now_ms, args = await self._prepare_args(records, inputs)
        process = self.prepare_process
        assert process is not None, "prepare_in without a prepare process"
        # Each source as the store codes it: the batch comes back packed for Redis.
        labels = [source_label(t, p, state.epoch) for (t, p), state in sources.items()]
        codes = await self.retry("sources", lambda: self.store.source_codes(labels))

        async def prepared() -> PreparedWork:
            try:
                blob = await process.run(prepare_packed, record_columns(records), *args, codes)
            except Exception as exc:  # it died twice, or the batch could not be pickled
                # Preparing is pure: here it is the same batch, only slower.
                log.warning("the prepare process failed (%r); preparing in the worker", exc)
                self.stats.counters["batches_prepared_in_worker_after_failure"] += 1
                return PreparedWork(records, prepare_batch(records, *args), sources, now_ms)
            with collector_held():
                batch = unpacked(blob, records)
            self.stats.counters["batches_prepared_in_process"] += 1
            return PreparedWork(records, batch, sources, now_ms)

        return asyncio.create_task(prepared())

    async def _prepare_args(
        self, records: list[Record], inputs: InputLog
    ) -> tuple[dict[tuple[str, int], SourceState], int, PrepareArgs]:
        """The batch's sources, now, and `prepare_batch`'s arguments after
        the records."""
        now_ms = self.now_ms()
        sources = await self.retry("sources", lambda: self._sources(records, inputs))
        epochs = {tp: state.epoch for tp, state in sources.items()}
        settings = self.settings
        return (
            sources,
            now_ms,
            (settings.input_topics, settings.rules, now_ms, settings.zone, epochs),
        )

    async def finish(self, work: PreparedWork) -> None:
        """Apply a prepared batch, then its dead letters, alerts and scores."""
        records, batch, sources, now_ms = work.records, work.batch, work.sources, work.now_ms
        # Who is linked to whom does not depend on the batch: asked while
        # Redis applies it, not in a round trip (two, for new customers)
        # after it — at 1k events/s that was a quarter of a batch's time.
        lookup = self._persons_ahead(batch)
        try:
            clocks = await self.retry("clock", lambda: self._clocks(batch, now_ms))
            result = await self.retry("batch", lambda: self._apply(batch, sources, clocks, now_ms))
        except BaseException:
            if lookup is not None:
                lookup.cancel()
            raise
        linked = await _settled(lookup) if lookup is not None else None
        for customer_id, why in result.failed.items():
            for record in batch.records_of.get(customer_id, []):
                reason = f"Redis refused the update of this record's customer: {why}"
                dead_letter(batch, record, "redis_refused", reason, now_ms, self.settings.rules)
        await self._send_dead_letters(batch)
        await self.retry("lapse alerts", lambda: self.send_findings(result.outbox))
        if lookup is not None:
            # Scores and tiers are a person's: a linked part is scored as the
            # merge of its person's parts, under the canonical id.
            people = await self.retry(
                "identities", lambda: self.resolver.canonical_profiles(result.profiles, linked)
            )
            result.profiles = people
        scored_at = self._scoring_now(batch, now_ms)
        purchased = {
            customer_id: first
            for customer_id, deltas in batch.by_customer.items()
            if (first := first_order(deltas)) is not None
        }
        await self.retry(
            "scores", lambda: self._score(result, scored_at, batch.partition_of, purchased)
        )
        self.stats.record(records, batch, result)
        self.metrics.batch_size.observe(len(records))
        if log.isEnabledFor(logging.DEBUG):
            # Customer ids are personal data: only ever logged at debug level.
            log.debug(
                "batch of %d: applied for customers %s; %d dead letters",
                len(records),
                sorted(result.profiles),
                len(batch.dead_letters),
            )

    def _persons_ahead(self, batch: PreparedBatch) -> asyncio.Task[dict[str, Person]] | None:
        if not self.settings.identity_stitching or not batch.by_customer:
            return None
        return asyncio.create_task(
            self.resolver.persons(list(batch.by_customer)), name=PERSONS_AHEAD
        )

    async def _apply(
        self,
        batch: PreparedBatch,
        sources: dict[tuple[str, int], SourceState],
        clocks: dict[int, float],
        wall_ms: int,
    ) -> ApplyResult:
        started = time.perf_counter()
        result = await self.store.apply_batch(
            batch.by_customer, batch.partition_of, clocks, batch.newest, sources, wall_ms
        )
        self.metrics.redis_apply_seconds.observe(time.perf_counter() - started)
        return result

    async def link(self, record: Record) -> None:
        """One record of `identities`: a link or unlink (streams/identities.py)."""
        await self.retry("identities", lambda: self.stitcher.apply(record, self.now_ms()))

    async def _score_people(self, changes: list[PersonChange], link_ts: int) -> None:
        """Each person a link changed, scored once as merged now (on the event
        clock: at the link's time)."""
        now = float(link_ts) if self.settings.lapse_clock == "event" else float(self.now_ms())
        # Parts merged into someone else stop being scored (and counted in
        # the segment sizes) on their own: their person is.
        merged_away = [
            m
            for c in changes
            if c.kind == "merge"
            for m in c.person.members
            if m != c.person.canonical
        ]
        if merged_away:
            segments = Counter(
                s for s in (await self.store.clear_scores(merged_away)).values() if s is not None
            )
            if segments:
                await self.segmenter.models.adjust_sizes({s: -n for s, n in segments.items()})
        alone = [c.person.canonical for c in changes if len(c.person.members) == 1]
        profiles = await self.store.fields_of(alone)
        linked = [c.person for c in changes if len(c.person.members) > 1]
        profiles.update(await self.resolver.merged_profiles(linked))
        await self._score(ApplyResult(profiles=profiles), now, {}, {})

    async def erase(self, record: Record) -> None:
        """One erasure request: remove the customer and every identifier
        linked to them, confirm on Kafka; an unusable request becomes a dead
        letter."""
        try:
            request = json.loads(record.value or b"")
            customer_id = str(request["customer_id"]).strip()
            request_id = str(request.get("request_id") or f"{record.partition}:{record.offset}")
            if not customer_id:
                raise ValueError("customer_id is empty")
        except (ValueError, KeyError, TypeError) as exc:
            batch = PreparedBatch()
            why = f"erasure request unusable: {exc}"
            dead_letter(
                batch, record, "bad_erasure_request", why, self.now_ms(), self.settings.rules
            )
            await self._send_dead_letters(batch)
            return
        removed = await self.retry(
            "erasure", lambda: self._erase_person(customer_id, record.partition)
        )
        confirmation = {
            "event_id": f"erased:{customer_id}:{request_id}",
            "customer_id": customer_id,
            "request_id": request_id,
            "keys_removed": removed,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
        }
        topic = self.settings.topic(self.settings.topic_erasure_confirmations)
        await (await self.send(topic, customer_id.encode(), json.dumps(confirmation).encode()))
        self.stats.counters["erasures"] += 1
        log.info("erased a customer on request %s (%d keys)", request_id, removed)
        log.debug("erasure request %s was for customer %s", request_id, customer_id)

    async def _erase_person(self, customer_id: str, partition: int) -> int:
        """Every part of the customer's person, and their links; safe to repeat."""
        person = (await self.resolver.persons([customer_id])).get(customer_id)
        parts = list(person.members) if person else [customer_id]
        removed = 0
        for part in parts:
            # Another part's lapse and member entries sit in a partition not
            # known here: sweeps and re-scoring drop entries whose profile is gone.
            count, segment = await self.store.erase(part, partition)
            removed += count
            if segment is not None:
                await self.segmenter.models.adjust_sizes({segment: -1})
        # The learner's sample (and its checkpoint) drops them too; acked
        # before the erasure is confirmed. Their vectors still gathering
        # never go out: sent after the forget, they would be learnt again.
        erased = set(parts)
        self._vectors = [v for v in self._vectors if v["id"] not in erased]
        topic = self.settings.topic(self.settings.topic_segment_features)
        async with self._features_sending:
            sent = await self.send(topic, None, forget_message(parts))
        await sent
        return removed + await self.store.forget_identities(parts)

    async def send_findings(self, outbox: dict[str, list[bytes]]) -> None:
        """Publish pending lapse findings as alerts, then drop them from the store."""
        if not outbox:
            return
        topic = self.settings.topic(self.settings.topic_lapse_alerts)
        stitching = self.settings.identity_stitching
        people = await self.resolver.activity(list(outbox)) if stitching else {}
        pending = []
        for part, items in outbox.items():
            person = people.get(part)
            canonical = person.canonical if person is not None else part
            for raw in items:
                finding = finding_from_json(raw)
                zone = self.settings.zone
                if person is not None and not holds_for_person(finding, person.days, zone):
                    # Seen under another identifier meanwhile: not a lapse.
                    self.stats.counters["lapse_findings_not_for_person"] += 1
                    continue
                alert = to_alert(canonical, finding)
                value = alert.model_dump_json().encode("utf-8")
                pending.append(await self.send(topic, canonical.encode("utf-8"), value))
                self.stats.alerts[alert.kind] += 1
        await asyncio.gather(*pending)
        await self.store.ack_outbox(outbox)

    async def refresh_model(self, owned: set[int]) -> None:
        """Load a newly promoted model; re-score the owned partitions with it."""
        if not await self.segmenter.refresh() or not owned:
            return
        if self.rescoring is not None and not self.rescoring.done():
            return  # the running pass will be followed by the next refresh
        now = await self.pass_now(owned)
        self.rescoring = asyncio.create_task(
            self.segmenter.rescore_partitions(
                owned, now, self.send, self.between_batches, self.in_hand.busy_s
            )
        )
        self.rescoring.add_done_callback(_report_rescoring)

    def _scoring_now(self, batch: PreparedBatch, wall_ms: float) -> float:
        """The time profiles are scored and valued at: now, or on the event
        clock (replays) the newest event time applied."""
        if self.settings.lapse_clock == "event" and batch.newest:
            return float(max(max(topics.values()) for topics in batch.newest.values()))
        return float(wall_ms)

    async def pass_now(self, partitions: set[int]) -> float:
        """What a pass over owned customers (re-scoring, re-valuing) measures
        at: on the event clock (replays) the newest event time of those
        partitions, else now."""
        now = float(self.now_ms())
        if self.settings.lapse_clock == "event":
            marks = await self.store.clock_marks(sorted(partitions))
            newest = [float(v) for m in marks.values() for k, v in m.items() if k.startswith("hw:")]
            now = max(newest) if newest else now
        return now

    async def _score(
        self,
        result: ApplyResult,
        now: float,
        partition_of: Mapping[str, int],
        purchased: Mapping[str, float],
    ) -> None:
        """Segments and value tiers of the updated profiles (their changes
        share one wait for Kafka's acks and one write: scored.py), the
        purchases' at-risk judging, and the learner's sample."""
        # The batch's lapse entries move to when its judging said (its alerts
        # are out by now): else every sweep judged each customer of the
        # batches before it again (docs/benchmarks.md).
        out = ScoreWrites(lapse_due=result.lapse_due)
        # One scan of each profile's category map for its features and the
        # learner's top category.
        spends = {
            cid: category_spend(fields)
            for cid, fields in result.profiles.items()
            if "last_seen" in fields
        }
        xs = self.segmenter.features_of(result.profiles, spends)
        # A profile is written only if its segment or RFM scores move, not to
        # record a newer model (models.profile.judged_version): after a
        # promotion every 8 s those writes were most of what promotions added
        # to the p99 at 3k and 5k events/s (docs/benchmarks.md).
        decisions = await self.segmenter.score(result.profiles, now, xs)
        await self.segmenter.emit(decisions, result.profiles, now, self.send, out)
        await self.predictor.after_apply(result.profiles, partition_of, purchased, now, out)
        await self.segmenter.settle(decisions, await out.flush(self.store))
        share = self.settings.segment_learn_sample
        half_life = self.settings.profile_config.half_life_ms
        model = self.segmenter.model
        vectors = []
        for customer_id, x in xs.items():
            fields = result.profiles[customer_id]
            # Past the learner's full sample a customer's vectors are never
            # kept: at a million customers that is nearly every message.
            if sampled(customer_id, share) and (model is None or model.feeds_learner(customer_id)):
                rfm_now = rfm_inputs(fields, now, half_life)
                vectors.append(feature_vector(customer_id, x, fields, rfm_now, spends[customer_id]))
        if vectors:
            if not self._vectors:
                self._vectors_since = self.clock()
            self._vectors.extend(vectors)
        await self.flush_features(force=False)

    async def flush_features(self, force: bool = True) -> None:
        """Send the learner's gathered vectors: all of them when `force`
        (the input is idle, the worker stops), else once they have gathered
        for `segment_features_interval_s` or fill a message."""
        if not self._vectors:
            return
        if not force:
            waited = self.clock() - self._vectors_since
            full = len(self._vectors) >= FEATURE_BATCH
            if waited < self.settings.segment_features_interval_s and not full:
                return
        topic = self.settings.topic(self.settings.topic_segment_features)
        vectors, self._vectors = self._vectors, []
        async with self._features_sending:
            for message in feature_messages(vectors):
                # Not awaited: a lost vector only slows learning.
                await self.send(topic, None, message)

    async def _send_dead_letters(self, batch: PreparedBatch) -> None:
        if not batch.dead_letters:
            return
        topic = self.settings.topic(self.settings.topic_dlq)
        pending = []
        for key, letter in batch.dead_letters:
            value = letter.model_dump_json().encode("utf-8")
            pending.append(await self.send(topic, key, value))
        # Wait for the broker's ack: a bad event must be on the DLQ before
        # its offset can be committed.
        await asyncio.gather(*pending)

    async def _sources(
        self, records: list[Record], inputs: InputLog
    ) -> dict[tuple[str, int], SourceState]:
        """The epoch of each topic partition in the batch; a log that ends at
        or below an offset already seen was reset (re-created, truncated):
        its records from now on are a new source, never taken for redeliveries."""
        highest: dict[tuple[str, int], int] = {}
        # A partition's records come in runs (a fetch's): each run's highest
        # offset found at C speed, not a tuple and a max() per record.
        for tp, run in itertools.groupby(records, _topic_partition):
            highest[tp] = max(highest.get(tp, -1), max(map(_offset, run)))
        # Kept while this worker's assignment stands (no round trip per
        # batch); read again after a rebalance, when another worker may have
        # moved a partition's epoch on.
        assignment = inputs.assignment()
        if assignment != self._sources_assignment:
            self._sources_seen.clear()
            self._sources_assignment = assignment
        missing = [tp for tp in highest if tp not in self._sources_seen]
        if missing:
            self._sources_seen.update(await self.store.source_states(missing))
        states = {}
        for tp, top in highest.items():
            seen = self._sources_seen[tp]
            log_end = inputs.highwater(*tp)
            states[tp] = observe(seen, top, log_end)
            if states[tp].epoch != seen.epoch:
                _warn_reset(tp, log_end, seen, states[tp])
                self.stats.counters["source_resets"] += 1
        self._sources_seen.update(states)
        return states

    async def _clocks(self, batch: PreparedBatch, wall_ms: int) -> dict[int, float]:
        """The clock each partition's lapses are judged against, this batch's
        events included (models/clock.py)."""
        partitions = sorted(set(batch.partition_of.values()))
        if self.settings.lapse_clock != "event":
            return dict.fromkeys(partitions, float(wall_ms))
        marks = await self.store.clock_marks(partitions)
        return {
            p: self.sweeper.clock_of(
                with_batch(marks[p], batch.newest.get(p, {}), wall_ms), wall_ms
            )
            for p in partitions
        }

    def test(self, batches: Iterable[list[Record]], inputs: InputLog | None = None) -> None:
        """Run batches to the end, synchronously (tests, with in-memory I/O)."""
        from patronage.streams.memory import StaticLog

        async def run() -> None:
            for records in batches:
                await self.process(records, inputs or StaticLog())
            if self.rescoring is not None:
                await self.rescoring

        asyncio.run(run())


def sampled(customer_id: str, share: float) -> bool:
    """Whether this customer feeds the learner: a fixed share of customers by
    id hash, every update of theirs (so the learner sees each sampled
    customer's latest state, and one-time buyers as often as regulars)."""
    return share >= 1 or customer_hash(customer_id) < share * 2**64


def _warn_reset(
    tp: tuple[str, int], log_end: int | None, seen: SourceState, now: SourceState
) -> None:
    log.warning(
        "offsets of %s partition %d restarted: the log ends at %s but offset %d was "
        "already seen (a re-created topic, a truncated log or a mirror failover); "
        "its records are applied as a new source (epoch %d), not as redeliveries",
        tp[0],
        tp[1],
        log_end,
        seen.max_offset,
        now.epoch,
    )


async def _settled(lookup: asyncio.Task[dict[str, Person]]) -> dict[str, Person] | None:
    """A lookup started ahead, or None if it failed: the caller asks again,
    under its retry policy (a transient error is waited out there)."""
    try:
        return await lookup
    except Exception:
        return None


def _report_rescoring(task: asyncio.Task[Any]) -> None:
    # A failed pass is repeated by the next model refresh; say why it failed.
    if not task.cancelled() and task.exception() is not None:
        log.warning("re-scoring after a promotion failed: %s", task.exception())
