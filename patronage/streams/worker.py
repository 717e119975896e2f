"""The Faust worker: consume input topics in batches, apply them to Redis, DLQ the rest.

Offsets are acked (and so committed) only after the batch's Redis round trip
succeeded and its dead letters were acknowledged by Kafka. Redis being down
stalls the batch with backoff; it never drops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import faust
import redis.exceptions
from faust.types import TP

from patronage.models.batch import PreparedBatch, Record, dead_letter, prepare_batch
from patronage.models.clock import with_batch
from patronage.models.lapse import finding_from_json, to_alert
from patronage.models.sources import SourceState, observe
from patronage.models.timeunits import DAY_MS
from patronage.streams.errors import FatalRedisError, classify, fatal_message
from patronage.streams.kafka_transport import App as ReadCommittedApp
from patronage.streams.lag import LagReader, PartitionLag
from patronage.streams.metrics import WorkerMetrics
from patronage.streams.segmenting import Learner, Segmenter, feature_message
from patronage.streams.settings import Settings
from patronage.streams.store import (
    ApplyResult,
    ProfileStore,
    ping_every_master,
    redis_for,
)
from patronage.streams.sweeper import LapseSweeper

log = logging.getLogger("patronage.worker")
T = TypeVar("T")


def stop_the_worker(agent: str, why: str = "") -> NoReturn:
    """An agent failed in a way it cannot recover from. A worker whose agent
    died would stay up consuming nothing; exiting lets the supervisor start a
    fresh one, and Kafka redelivers everything not yet committed."""
    if why:
        log.critical("%s failed: %s; stopping the worker", agent, why)
    else:
        log.critical("agent %s failed; stopping the worker", agent, exc_info=True)
    logging.shutdown()
    os._exit(70)


def _report_rescoring(task: asyncio.Task[Any]) -> None:
    # A failed pass is repeated by the next model refresh; say why it failed.
    if not task.cancelled() and task.exception() is not None:
        log.warning("re-scoring after a promotion failed: %s", task.exception())


class Runtime:
    """State shared by agents and web views of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_for(settings)
        self.store = ProfileStore(
            self.redis,
            settings.key_prefix,
            settings.profile_config,
            retention_ms=int(settings.retention_days * DAY_MS),
        )
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.corrected: Counter[tuple[str, str]] = Counter()
        self.lines_dropped: Counter[tuple[str, str]] = Counter()
        self.sources_seen: dict[tuple[str, int], SourceState] = {}
        self.sources_assignment: frozenset[Any] = frozenset()
        self.consumed: Counter[str] = Counter()
        self.last_event_ts: dict[tuple[str, int], int] = {}
        self.redis_ok = True
        self.alerts: Counter[str] = Counter()
        self.app: faust.App | None = None
        self.segmenter = Segmenter(settings, self.redis, self.store)
        self.learner = Learner(settings, self.segmenter.models)
        self.rescoring: asyncio.Task[None] | None = None
        self.lag_rows: list[PartitionLag] = []
        self.lag_reader = LagReader(settings)
        self.kafka_ok_at = 0.0
        self.segment_sizes: dict[int, int] = {}
        self.metrics = WorkerMetrics()
        self.started_at = time.time()
        self.sweeper = LapseSweeper(
            self.store,
            settings.lapse_clock,
            settings.lapse_sweep_batch,
            settings.lapse_event_lateness_s,
            settings.lapse_input_idle_s,
            settings.activity_topics,
            self.send_findings,
        )
        self.metrics.attach(self)

    async def sample_lag(self) -> None:
        try:
            self.lag_rows = await self.lag_reader.sample(waiting=True)
            self.kafka_ok_at = time.monotonic()
        except Exception as exc:  # any Kafka failure means "not ready", never a crash
            log.warning("lag sample failed: %s", exc)
        await self.guarded("segment sizes", self._refresh_sizes)

    async def _refresh_sizes(self) -> None:
        self.segment_sizes = await self.segmenter.models.sizes()

    async def readiness(self, app: faust.App) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(ping_every_master(self.redis, self.settings.redis_cluster), 1.0)
            # redis_ok is False only while a batch is stuck retrying.
            checks["redis"] = "ok" if self.redis_ok else "unavailable: a batch is being retried"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
        fresh = time.monotonic() - self.kafka_ok_at < 3 * self.settings.lag_interval_s + 5
        checks["kafka"] = "ok" if fresh else "no successful broker round trip recently"
        inputs = set(self.settings.input_topics)
        owned = [tp for tp in app.consumer.assignment() if tp.topic in inputs]
        checks["partitions"] = f"{len(owned)} assigned" if owned else "none assigned yet"
        if checks["redis"] == "ok":
            promoted = await self.segmenter.models.current_version()
            loaded = self.segmenter.model.version if self.segmenter.model else 0
            if promoted and not loaded:
                checks["model"] = f"version {promoted} promoted but not loaded"
            else:
                checks["model"] = f"version {loaded}" if loaded else "none promoted yet"
        ok = (
            checks["redis"] == "ok"
            and checks["kafka"] == "ok"
            and bool(owned)
            and "not loaded" not in checks.get("model", "")
        )
        return ok, checks

    async def process(self, app: faust.App, records: list[Record]) -> None:
        now_ms = int(time.time() * 1000)
        sources = await self.with_redis_retry("sources", lambda: self._sources(app, records))
        batch = prepare_batch(
            records,
            self.settings.input_topics,
            self.settings.rules,
            now_ms,
            self.settings.zone,
            {tp: state.epoch for tp, state in sources.items()},
        )
        clocks = await self.with_redis_retry("clock", lambda: self._clocks(batch, now_ms))
        result = await self._apply_with_retry(batch, sources, clocks, now_ms)
        for customer_id, why in result.failed.items():
            for record in batch.records_of.get(customer_id, []):
                reason = f"Redis refused the update of this record's customer: {why}"
                dead_letter(batch, record, "redis_refused", reason, now_ms, self.settings.rules)
        await self._send_dead_letters(app, batch)
        # Alerts and segment changes carry deterministic ids, so a retry after
        # a Redis failure re-sends duplicates consumers can drop, never gaps.
        await self.with_redis_retry("lapse alerts", lambda: self.send_findings(result.outbox))
        await self.with_redis_retry("segments", lambda: self._segment(result, batch, now_ms))
        self._record(records, batch, result)
        if log.isEnabledFor(logging.DEBUG):
            # Customer ids are personal data: only ever logged at debug level.
            log.debug(
                "batch of %d: applied for customers %s; %d dead letters",
                len(records),
                sorted(result.profiles),
                len(batch.dead_letters),
            )

    async def erase(self, message: Any) -> None:
        """Handle one erasure request: remove the customer, confirm on Kafka."""
        try:
            request = json.loads(message.value or b"")
            customer_id = str(request["customer_id"]).strip()
            request_id = str(request.get("request_id") or f"{message.partition}:{message.offset}")
            if not customer_id:
                raise ValueError("customer_id is empty")
        except (ValueError, KeyError, TypeError) as exc:
            record = Record(
                message.topic, message.partition, message.offset, message.key, message.value
            )
            batch = PreparedBatch()
            dead_letter(
                batch,
                record,
                "bad_erasure_request",
                f"erasure request unusable: {exc}",
                int(time.time() * 1000),
                self.settings.rules,
            )
            assert self.app is not None
            await self._send_dead_letters(self.app, batch)
            return
        removed, segment = await self.with_redis_retry(
            "erasure", lambda: self.store.erase(customer_id, message.partition)
        )
        if segment is not None:
            sizes = self.segmenter.models.sizes_key
            await self.with_redis_retry(
                "segment size", lambda: self.redis.hincrby(sizes, str(segment), -1)
            )
        confirmation = {
            "event_id": f"erased:{customer_id}:{request_id}",
            "customer_id": customer_id,
            "request_id": request_id,
            "keys_removed": removed,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        topic = self.settings.topic(self.settings.topic_erasure_confirmations)
        future = await self.send(topic, customer_id.encode(), json.dumps(confirmation).encode())
        await future
        self.counters["erasures"] += 1
        log.info("erased a customer on request %s (%d keys)", request_id, removed)
        log.debug("erasure request %s was for customer %s", request_id, customer_id)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        assert self.app is not None
        return await self.app.producer.send(topic, key, value, None, None, None)

    async def _segment(self, result: ApplyResult, batch: PreparedBatch, wall_ms: float) -> None:
        """Score the updated profiles and feed the learner."""
        if not result.profiles or self.app is None:
            return
        now = wall_ms
        if self.settings.lapse_clock == "event" and batch.newest:
            # Replays: recency is measured at the newest event time applied.
            now = float(max(max(topics.values()) for topics in batch.newest.values()))
        xs = self.segmenter.features_of(result.profiles, now)
        decisions = await self.segmenter.score(result.profiles, now, xs)
        await self.segmenter.commit(decisions, result.profiles, now, self.send)
        topic = self.settings.topic(self.settings.topic_segment_features)
        sample = self.settings.segment_learn_sample
        for customer_id, x in xs.items():
            fields = result.profiles[customer_id]
            if sampled(customer_id, fields, sample):
                # Not awaited one by one: a lost vector only slows learning.
                await self.send(topic, customer_id.encode(), feature_message(x, fields))

    async def refresh_model(self, owned: set[int]) -> None:
        if not await self.segmenter.refresh() or not owned:
            return
        if self.rescoring is not None and not self.rescoring.done():
            return  # the running pass will be followed by the next refresh
        now = time.time() * 1000
        if self.settings.lapse_clock == "event":
            marks = await self.store.clock_marks(sorted(owned))
            newest = [float(v) for m in marks.values() for k, v in m.items() if k.startswith("hw:")]
            now = max(newest) if newest else now
        self.rescoring = asyncio.create_task(
            self.segmenter.rescore_partitions(owned, self.settings.partitions, now, self.send)  # type: ignore[arg-type]
        )
        self.rescoring.add_done_callback(_report_rescoring)

    async def send_findings(self, outbox: dict[str, list[bytes]]) -> None:
        """Publish pending lapse findings as alerts, then drop them from Redis."""
        if not outbox or self.app is None:
            return
        topic = self.settings.topic(self.settings.topic_lapse_alerts)
        pending = []
        for customer_id, items in outbox.items():
            for raw in items:
                alert = to_alert(customer_id, finding_from_json(raw))
                value = alert.model_dump_json().encode("utf-8")
                key = customer_id.encode("utf-8")
                pending.append(await self.app.producer.send(topic, key, value, None, None, None))
                self.alerts[alert.kind] += 1
        await asyncio.gather(*pending)
        await self.store.ack_outbox(outbox)

    async def _send_dead_letters(self, app: faust.App, batch: PreparedBatch) -> None:
        if not batch.dead_letters:
            return
        topic = self.settings.topic(self.settings.topic_dlq)
        pending = []
        for key, letter in batch.dead_letters:
            value = letter.model_dump_json().encode("utf-8")
            pending.append(await app.producer.send(topic, key, value, None, None, None))
        # Wait for the broker's ack: a bad event must be on the DLQ before
        # its offset can be committed.
        await asyncio.gather(*pending)

    async def _sources(
        self, app: faust.App, records: list[Record]
    ) -> dict[tuple[str, int], SourceState]:
        """The epoch of each topic partition in the batch; a log that ends at
        or below an offset already seen was reset (re-created, truncated):
        its records from now on are a new source, never taken for redeliveries."""
        highest: dict[tuple[str, int], int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            highest[tp] = max(highest.get(tp, -1), record.offset)
        # Kept between batches while this worker's assignment stands (no
        # round trip per batch); read again from Redis after a rebalance,
        # when another worker may have moved a partition's epoch on.
        assignment = frozenset(app.consumer.assignment())
        if assignment != self.sources_assignment:
            self.sources_seen.clear()
            self.sources_assignment = assignment
        missing = [tp for tp in highest if tp not in self.sources_seen]
        if missing:
            self.sources_seen.update(await self.store.source_states(missing))
        seen = {tp: self.sources_seen[tp] for tp in highest}
        states = {}
        for tp, top in highest.items():
            log_end = app.consumer.highwater(TP(*tp))
            states[tp] = observe(seen[tp], top, log_end)
            if states[tp].epoch != seen[tp].epoch:
                log.warning(
                    "offsets of %s partition %d restarted: the log ends at %s but offset %d was "
                    "already seen (a re-created topic, a truncated log or a mirror failover); "
                    "its records are applied as a new source (epoch %d), not as redeliveries",
                    tp[0],
                    tp[1],
                    log_end,
                    seen[tp].max_offset,
                    states[tp].epoch,
                )
                self.counters["source_resets"] += 1
        self.sources_seen.update(states)
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

    async def _apply_with_retry(
        self,
        batch: PreparedBatch,
        sources: dict[tuple[str, int], SourceState],
        clocks: dict[int, float],
        wall_ms: int,
    ) -> ApplyResult:
        async def apply() -> ApplyResult:
            started = time.perf_counter()
            result = await self.store.apply_batch(
                batch.by_customer,
                batch.partition_of,
                clocks,
                batch.newest,
                sources,
                wall_ms,
            )
            self.metrics.redis_apply_seconds.observe(time.perf_counter() - started)
            return result

        return await self.with_redis_retry("batch", apply)

    async def with_redis_retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent call until it succeeds. Transient Redis errors
        back off (not ready, nothing committed, never dropped); fatal ones stop
        the worker naming the setting; anything else is raised to the caller."""
        delay = 0.1
        while True:
            try:
                result = await call()
            except Exception as exc:
                kind = classify(exc)
                if kind == "fatal":
                    raise FatalRedisError(fatal_message(exc)) from exc
                if kind == "poison":
                    raise
                self.redis_ok = False
                self.counters["redis_retries"] += 1
                log.warning("redis unavailable (%s); retrying %s in %.1fs", exc, what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_retry_max_s)
                if isinstance(exc, redis.exceptions.NoScriptError):
                    # A (cluster) node restarted and forgot our scripts.
                    await self.guarded("script load", self.store.ensure_scripts, True)
                continue
            if not self.redis_ok:
                log.warning("redis is back; resuming")
            self.redis_ok = True
            return result

    async def guarded(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """One run of a timer's work: a transient Redis error skips this run
        (the next tick tries again), a fatal one stops the worker."""
        try:
            await call(*args)
        except Exception as exc:
            kind = classify(exc)
            if kind == "fatal":
                stop_the_worker(what, fatal_message(exc))
            if kind == "transient":
                log.warning("%s skipped: redis unavailable (%s)", what, exc)
            else:
                log.error("%s failed; trying again on the next run", what, exc_info=True)

    def _record(self, records: list[Record], batch: PreparedBatch, result: ApplyResult) -> None:
        for record in records:
            self.consumed[record.topic] += 1
        self.counters["applied"] += result.applied
        self.counters["duplicate_offsets"] += result.duplicate_offsets
        self.counters["duplicate_events"] += result.duplicate_events
        self.rejected.update(batch.rejected)
        self.corrected.update(batch.corrected)
        self.lines_dropped.update(batch.lines_dropped)
        for tp, ts in batch.max_event_ts.items():
            self.last_event_ts[tp] = max(self.last_event_ts.get(tp, 0), ts)
        self.metrics.batch_size.observe(len(records))


def sampled(customer_id: str, fields: dict[str, float | str], share: float) -> bool:
    if share >= 1:
        return True
    key = f"{customer_id}:{fields.get('events_applied', 0)}".encode()
    return zlib.crc32(key) / 0xFFFFFFFF < share


def build_app(settings: Settings) -> tuple[faust.App, Runtime]:
    runtime = Runtime(settings)
    broker = ";".join(f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(","))
    app_kwargs: dict[str, Any] = {
        "broker": broker,
        "store": "memory://",
        "datadir": settings.data_dir,
        "web_enabled": True,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "topic_disable_leader": True,
        "topic_allow_declare": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": settings.commit_interval_s,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(1.0, settings.session_timeout_s / 10),
        "producer_acks": -1,
        "stream_buffer_maxsize": max(4096, settings.batch_max * 2),
    }
    ssl_context = settings.kafka_ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None
        # An ssl_context turns faust's SASL credentials into SASL_SSL.
        app_kwargs["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    elif ssl_context is not None:
        app_kwargs["broker_credentials"] = faust.SSLCredentials(ssl_context)
    app = ReadCommittedApp(settings.group_id, **app_kwargs)
    runtime.app = app

    source = app.topic(
        *settings.input_topics,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )

    @app.agent(source, name="ingest")
    async def ingest(stream: Any) -> None:
        try:
            async for events in stream.noack_take(
                settings.batch_max, within=settings.batch_within_s
            ):
                records = [
                    Record(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.key,
                        e.message.value,
                    )
                    for e in events
                ]
                await runtime.process(app, records)
                for event in events:
                    await stream.ack(event)
        except FatalRedisError as exc:
            stop_the_worker("ingest", str(exc))
        except Exception:
            stop_the_worker("ingest")

    input_topics = set(settings.input_topics)

    @app.timer(interval=settings.lapse_sweep_interval_s)  # type: ignore[untyped-decorator]
    async def lapse_sweep() -> None:
        # Only the partitions this worker owns: the sweep moves with them.
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic in input_topics}
        if not owned:
            return
        await runtime.guarded("lapse sweep", runtime.sweeper.sweep, owned)

    features_topic = app.topic(
        settings.topic(settings.topic_segment_features),
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
    )

    @app.agent(features_topic, name="learn")
    async def learn(stream: Any) -> None:
        # Only the one worker that owns the single partition receives vectors.
        async for values in stream.take(1000, within=1.0):
            # The vectors are learnt in memory; a promotion waits for Redis.
            vectors = [json.loads(v) for v in values]
            await runtime.guarded("segment learner", runtime.learner.learn, vectors)

    @app.timer(interval=settings.segment_refresh_interval_s)  # type: ignore[untyped-decorator]
    async def segment_model_refresh() -> None:
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic in input_topics}
        await runtime.guarded("model refresh", runtime.refresh_model, owned)

    @app.timer(interval=settings.lag_interval_s)  # type: ignore[untyped-decorator]
    async def lag_sample() -> None:
        await runtime.sample_lag()

    # faust's Signal typing rejects this receiver; faust calls it (sender, signal=…) and awaits it.
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_lag_reader(sender: Any, **kwargs: Any) -> None:
        await runtime.lag_reader.close()

    erasures = app.topic(
        settings.topic(settings.topic_erasure_requests),
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(erasures, name="erase")
    async def erase(stream: Any) -> None:
        try:
            async for event in stream.events():
                await runtime.erase(event.message)
        except FatalRedisError as exc:
            stop_the_worker("erase", str(exc))
        except Exception:
            stop_the_worker("erase")

    from patronage.streams import web

    web.register(app, runtime)
    return app, runtime
