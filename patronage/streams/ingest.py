"""The input topics, consumed in whole fetches below Faust's stream layer.

Faust's per-message machinery (stream buffers, per-event acks, the
conductor) took about half of the worker's CPU; aiokafka's `getmany` hands
over everything fetched at once, and the pipeline works in batches anyway.
Faust keeps what it is good at: the app, the low-volume agents (learner,
erasure), timers, the web views and the shutdown signals.

Offsets are committed only for batches the pipeline finished (Redis applied
them, their dead letters were acknowledged), every `commit_interval_s`, at a
rebalance for the partitions given away, and at shutdown. A batch never
overlaps a rebalance (one lock); a record redelivered after a crash or a
failed commit is dropped by the store's per-partition offset check.

Automatic garbage collection is off while a batch is fetched and worked on
(`collector_held`): the batch's objects are freed by reference counting at
its end, and collections inside it only walked them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownTopicOrPartitionError

from patronage.models.batch import Record
from patronage.streams.errors import FatalRedisError
from patronage.streams.pipeline import Pipeline
from patronage.streams.retry import stop_the_worker
from patronage.streams.settings import Settings

log = logging.getLogger("patronage.ingest")

KAFKA_START_RETRY_MAX_S = 5.0  # longest wait between attempts to start ingest
UNKNOWN_TOPIC_RETRIES = 3  # each attempt waits up to the client's request timeout
# The longest the collector stays off for one batch: a batch stalled on
# Redis retries must not keep other tasks' garbage cycles for minutes.
COLLECTOR_HOLD_MAX_S = 5.0


@contextlib.contextmanager
def collector_held(longest_s: float = COLLECTOR_HOLD_MAX_S) -> Iterator[None]:
    """Automatic garbage collection off while a batch is fetched and worked
    on, on again when it is done (after `longest_s` at the latest).

    A batch is ~10^5 tracked objects (records, deltas, lists) alive for the
    whole batch; young collections during it promoted them to the old
    generation, which then triggered full collections walking the batch in
    hand: 30 of up to 163 ms in one 24 s drain, 3.5 s of collecting in all
    (docs/benchmarks.md). Freed by reference counting when the batch ends,
    they are never the collector's business. Other tasks' cycles made
    meanwhile wait for the end of the batch."""
    if not gc.isenabled():  # someone else holds it (a test, a profiler)
        yield
        return
    gc.disable()
    watchdog = asyncio.get_running_loop().call_later(longest_s, gc.enable)
    try:
        yield
    finally:
        watchdog.cancel()
        gc.enable()


def input_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The input consumer: the worker's consumer group, committed records only."""
    return AIOKafkaConsumer(
        **settings.kafka_client_kwargs(),
        group_id=settings.group_id,
        client_id=f"{settings.group_id}-ingest",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A shop's transactional producer may abort; only committed records count.
        isolation_level="read_committed",
        max_poll_records=settings.batch_max,
        # A deleted and re-created input topic is noticed at the next metadata
        # refresh (aiokafka's default: every 5 minutes).
        metadata_max_age_ms=5000,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(max(1.0, settings.session_timeout_s / 10) * 1000),
    )


class BatchIngest:
    """Fetch -> `Pipeline.process` -> commit, one batch at a time. It is the
    pipeline's `InputLog`: the assignment and log ends are the consumer's."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.consumer: AIOKafkaConsumer | None = None
        self.lock = asyncio.Lock()
        self.applied: dict[TopicPartition, int] = {}  # next offset to commit
        self.stopping = False

    # -- InputLog ------------------------------------------------------------
    def assignment(self) -> frozenset[tuple[str, int]]:
        if self.consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self.consumer.assignment())

    def highwater(self, topic: str, partition: int) -> int | None:
        if self.consumer is None:
            return None
        end: int | None = self.consumer.highwater(TopicPartition(topic, partition))
        return end

    def owned(self, topics: set[str]) -> set[int]:
        return {p for topic, p in self.assignment() if topic in topics}

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        """Until `stop()`; a failure the retries cannot cure stops the worker."""
        try:
            await self._run()
        except FatalRedisError as exc:
            stop_the_worker("ingest", str(exc))
        except Exception:
            stop_the_worker("ingest")

    async def _start_consumer(self) -> AIOKafkaConsumer | None:
        """The started input consumer; None if stopped first. A broker that
        is down (restarting) while the worker starts is waited for, as one
        that goes down later is: failing here stopped the worker. A client
        started while the broker restarts can also lose its brokers and end
        with the input topics "unknown" (seen in test_broker_restart_mid_stream);
        a new client is tried a few times before that stops the worker (a
        topic really missing is a setting to fix)."""
        delay = 0.5
        unknown_topics = 0
        while not self.stopping:
            consumer = self.consumer = input_consumer(self.settings)
            consumer.subscribe(list(self.settings.input_topics), listener=_CommitOnRevoke(self))
            try:
                await consumer.start()
            except (KafkaConnectionError, UnknownTopicOrPartitionError) as exc:
                await consumer.stop()
                if isinstance(exc, UnknownTopicOrPartitionError):
                    unknown_topics += 1
                    if unknown_topics > UNKNOWN_TOPIC_RETRIES:
                        raise
                log.warning("kafka unavailable (%s); starting ingest again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, KAFKA_START_RETRY_MAX_S)
                continue
            return consumer
        return None

    async def _run(self) -> None:
        consumer = await self._start_consumer()
        if consumer is None:
            return
        # Its own task: a batch stalled on Redis must not hold back the
        # commit of the batches applied before it.
        committer = asyncio.create_task(self._commit_every_interval())
        wait_ms = int(self.settings.batch_within_s * 1000)
        try:
            while not self.stopping:
                with collector_held():
                    await self._fetch_and_process(consumer, wait_ms)
                # One turn of the loop with the collector on: what it would
                # have done during the batch it does now, on what outlived
                # the batch (little), by CPython's own schedule.
                await asyncio.sleep(0)
        finally:
            committer.cancel()
            await self.commit()
            await consumer.stop()

    async def _fetch_and_process(self, consumer: AIOKafkaConsumer, wait_ms: int) -> None:
        # The fetched records die with this frame, before the collector is back.
        fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=self.settings.batch_max)
        if fetched:
            async with self.lock:
                await self._process(consumer, fetched)

    async def _commit_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            await self.commit()

    async def _process(self, consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]) -> None:
        # Partitions given away while the batch waited for the lock are the
        # new owner's now; their records come back to it from the commit.
        assigned = consumer.assignment()
        batches = {tp: records for tp, records in fetched.items() if tp in assigned}
        if not batches:
            return
        records = [
            Record(r.topic, r.partition, r.offset, r.key, r.value)
            for records in batches.values()
            for r in records
        ]
        await self.pipeline.process(records, self)
        for tp, done in batches.items():
            self.applied[tp] = done[-1].offset + 1

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the finished offsets (of `partitions`, or all that are owned)."""
        consumer = self.consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        due = {
            tp: offset
            for tp, offset in self.applied.items()
            if tp in owned and (partitions is None or tp in partitions)
        }
        if not due:
            return
        try:
            await consumer.commit(due)
        except KafkaError as exc:
            # Redelivered records are dropped by the store: a lost commit costs time only.
            log.warning("offset commit failed (%s); the records will be redelivered", exc)
            return
        for tp, offset in due.items():
            if self.applied.get(tp) == offset:
                del self.applied[tp]

    def stop(self) -> None:
        self.stopping = True


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions go to another worker: finish the batch in hand and
    commit what was applied, so the new owner starts where this one stopped."""

    def __init__(self, ingest: BatchIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.ingest.lock:
            await self.ingest.commit(set(revoked))
            for tp in revoked:
                self.ingest.applied.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        owned = sorted((tp.topic, tp.partition) for tp in assigned)
        log.info("input partitions assigned: %s", owned)
