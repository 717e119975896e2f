"""The input topics, consumed in whole fetches below Faust's stream layer.

Faust's per-message machinery (stream buffers, per-event acks, the
conductor) took about half of the worker's CPU; aiokafka's `getmany` hands
over everything fetched at once, and the pipeline works in batches anyway.
Faust keeps what it is good at: the app, the low-volume agents (learner,
erasure), timers, the web views and the shutdown signals.

Offsets are committed only for batches the pipeline finished (Redis applied
them, their dead letters were acknowledged), every `commit_interval_s`, as
soon as it has caught up (nothing fetched, nothing in hand), at a rebalance
for the partitions given away, and at shutdown. A batch never
overlaps a rebalance (one lock); a record redelivered after a crash or a
failed commit is dropped by the store's per-partition offset check.

Automatic garbage collection is off while a batch is fetched and worked on
(`collector_held`): the batch's objects are freed by reference counting at
its end, and collections inside it only walked them.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownTopicOrPartitionError

from patronage.models.batch import Record
from patronage.streams.collector import collector_held
from patronage.streams.errors import FatalRedisError
from patronage.streams.fetching import GATHER_FROM_RECORDS, FetchGather, fetch_params
from patronage.streams.fitpool import FitProcess
from patronage.streams.pipeline import Pipeline, PreparedWork
from patronage.streams.retry import stop_the_worker
from patronage.streams.settings import Settings

log = logging.getLogger("patronage.ingest")

KAFKA_START_RETRY_MAX_S = 5.0  # longest wait between attempts to start ingest
UNKNOWN_TOPIC_RETRIES = 3  # each attempt waits up to the client's request timeout


@dataclass
class _Ahead:
    """A fetched batch whose preparing runs in the prepare process."""

    batches: dict[Any, list[Any]]  # topic partition -> its fetched records
    work: asyncio.Task[PreparedWork]
    rebalances: int  # `BatchIngest.rebalances` when it was fetched


def _records(batches: dict[Any, list[Any]]) -> list[Record]:
    # (in C: a record's fields read and made a Record without a Python call)
    return [_make_record(_record_fields(r)) for records in batches.values() for r in records]


_record_fields = operator.attrgetter("topic", "partition", "offset", "key", "value")
_make_record = Record._make


def input_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The input consumer: the worker's consumer group, committed records only."""
    # Answered at the first record, each fetch carried a record or two at
    # 1k events/s, and aiokafka's fetch path took ~15 % of the worker's CPU
    # (docs/benchmarks.md, "…and fuller fetches"). Made gathering; from the
    # first fetch on, what the fetches bring sets it (fetching.py).
    max_wait_ms, min_bytes = fetch_params(GATHER_FROM_RECORDS, settings.fetch_wait_ms)
    return AIOKafkaConsumer(
        **settings.kafka_client_kwargs(),
        group_id=settings.group_id,
        client_id=f"{settings.group_id}-ingest",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A shop's transactional producer may abort; only committed records count.
        isolation_level="read_committed",
        max_poll_records=settings.batch_max,
        fetch_max_wait_ms=max_wait_ms,
        fetch_min_bytes=min_bytes,
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
        self.rebalances = 0  # partitions revoked so far (a batch prepared ahead spans none)
        self.consumer: AIOKafkaConsumer | None = None
        self.lock = asyncio.Lock()
        self.applied: dict[TopicPartition, int] = {}  # next offset to commit
        self.stopping = False

    @property
    def prepare_process(self) -> FitProcess | None:
        return self.pipeline.prepare_process

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
        if self.prepare_process is not None:
            # Started with the worker already; again here, so one that died
            # since is replaced before the first large batch.
            self.prepare_process.start()
        wait_ms = int(self.settings.batch_within_s * 1000)
        ahead: list[_Ahead] = []
        gather = FetchGather(consumer, self.settings.fetch_wait_ms)
        try:
            while not self.stopping:
                with collector_held():
                    ahead = await self._fetch_and_process(consumer, wait_ms, ahead, gather)
                # One turn of the loop with the collector on: what it would
                # have done during the batch it does now, on what outlived
                # the batch (little), by CPython's own schedule.
                await asyncio.sleep(0)
        finally:
            for prepared in ahead:
                # Never applied, so never committed: whoever owns its
                # partitions next reads its records again.
                prepared.work.cancel()
            if self.prepare_process is not None:
                self.prepare_process.shutdown()
            committer.cancel()
            try:
                await self.pipeline.flush_features()
            except Exception:  # the producer may be stopping first
                log.debug("the learner's last vectors were not sent", exc_info=True)
            await self.commit()
            await consumer.stop()

    async def _fetch_and_process(
        self,
        consumer: AIOKafkaConsumer,
        wait_ms: int,
        ahead: list[_Ahead],
        gather: FetchGather | None = None,
    ) -> list[_Ahead]:
        """Fetch, then finish batches prepared ahead and the one just
        fetched — or, when that one is large and there is a prepare process,
        start preparing it there and keep it, to be finished after the
        batches fetched before it: the worker finishes one batch while the
        prepare processes validate the next ones (as many as there are
        processes)."""
        # With a batch prepared ahead, only what has arrived already: the
        # batch in hand is not held up waiting for more.
        timeout_ms = 0 if ahead else wait_ms
        # The fetched records die with this frame, before the collector is
        # back (but for a batch prepared ahead, kept for the next turn).
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.batch_max)
        if gather is not None and (fetched or timeout_ms > 0):
            # (nothing yet without waiting says nothing about the stream)
            gather.after(sum(len(records) for records in fetched.values()))
        if not fetched and not ahead:
            # Idle: the learner's vectors still gathering go out now.
            await self.pipeline.flush_features()
        else:
            async with self.lock:
                batches = self._still_owned(consumer, fetched)
                if self._prepare_elsewhere(batches):
                    work = await self.pipeline.prepare_in(_records(batches), self)
                    ahead.append(_Ahead(batches, work, self.rebalances))
                    batches = {}
                if not fetched:
                    keep = len(ahead) - 1  # nothing new: the oldest is finished
                elif batches:
                    keep = 0  # a batch prepared here comes after every one before it
                else:
                    keep = self.prepare_depth
                while len(ahead) > keep:
                    await self._finish_ahead(consumer, ahead.pop(0))
                if batches:
                    await self._process(batches)
        if not fetched and not ahead:
            # Caught up: what was applied is committed now, not at the next
            # interval, so the group's lag reads zero once the work is done
            # (ops watch it) and a restart reads nothing again. A stream that
            # keeps coming is committed on the interval.
            await self.commit()
        return ahead

    @property
    def prepare_depth(self) -> int:
        """How many batches are prepared ahead at most: one a process."""
        process = self.prepare_process
        return process.processes if process is not None else 1

    def _prepare_elsewhere(self, batches: dict[Any, list[Any]]) -> bool:
        if self.prepare_process is None or not batches:
            return False
        size = sum(len(records) for records in batches.values())
        return size >= self.settings.prepare_process_min_records

    async def _finish_ahead(self, consumer: AIOKafkaConsumer, ahead: _Ahead) -> None:
        if ahead.rebalances != self.rebalances:
            # Partitions changed hands since it was prepared: what is still
            # ours is prepared again here, from sources read again.
            ahead.work.cancel()
            batches = self._still_owned(consumer, ahead.batches)
            if batches:
                await self._process(batches)
            return
        await self.pipeline.process_prepared(ahead.work)
        self._applied(ahead.batches)

    @staticmethod
    def _still_owned(
        consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]
    ) -> dict[Any, list[Any]]:
        # Partitions given away while the batch waited for the lock are the
        # new owner's now; their records come back to it from the commit.
        assigned = consumer.assignment()
        return {tp: records for tp, records in fetched.items() if tp in assigned}

    async def _process(self, batches: dict[Any, list[Any]]) -> None:
        await self.pipeline.process(_records(batches), self)
        self._applied(batches)

    def _applied(self, batches: dict[Any, list[Any]]) -> None:
        for tp, done in batches.items():
            self.applied[tp] = done[-1].offset + 1

    async def _commit_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            await self.commit()

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
            self.ingest.rebalances += 1
            await self.ingest.commit(set(revoked))
            for tp in revoked:
                self.ingest.applied.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        owned = sorted((tp.topic, tp.partition) for tp in assigned)
        log.info("input partitions assigned: %s", owned)
