"""Prometheus metrics of one worker, with prometheus_client.

Counts the worker keeps anyway (per topic, per reason) are read at scrape time
by a collector, so the hot path does no extra bookkeeping; distributions
(batch size, Redis round-trip time) are real histograms, observed per batch,
whose `_count` and `_sum` only ever grow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from patronage import compiled

if TYPE_CHECKING:
    from patronage.streams.monitor import Monitor
    from patronage.streams.pipeline import Pipeline

# The 0.0.4 text format every Prometheus reads; aiohttp adds the charset itself.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.replace("; charset=utf-8", "")
# No `*_created` series: a timestamp per family only doubles what dashboards read.
disable_created_metrics()  # type: ignore[no-untyped-call]


class WorkerMetrics:
    """The registry /metrics exposes, and the histograms the worker observes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_size = Histogram(
            "patronage_batch_size",
            "Records per processed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000),
            registry=self.registry,
        )
        self.redis_apply_seconds = Histogram(
            "patronage_redis_apply_seconds",
            "Time of one batch's Redis round trip.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )

        self.loop_lag_seconds = Histogram(
            "patronage_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer: time in which no input "
            "batch could be served (a long garbage collection, a blocking call).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )

    def attach(self, pipeline: Pipeline, monitor: Monitor) -> None:
        """Expose what the pipeline counted and the monitor sampled, read at scrape time."""
        self.registry.register(_Collector(pipeline, monitor))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def watch_loop_lag(
    observe: Callable[[float], None],
    interval_s: float = 0.1,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Observe, for ever, how much later than asked a sleep of `interval_s`
    wakes: the event loop's stalls, as an input batch waiting would see them."""
    while True:
        started = clock()
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - started - interval_s))


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class _Collector(Collector):
    def __init__(self, pipeline: Pipeline, monitor: Monitor) -> None:
        self.pipeline = pipeline
        self.stats = pipeline.stats
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._redis()
        yield from self._lag()
        yield from self._lapse_and_segments()

    def _events(self) -> Iterator[Metric]:
        r = self.stats
        consumed = _counter(
            "patronage_events_consumed", "Records read from input topics.", ("topic",)
        )
        for topic, count in sorted(r.consumed.items()):
            consumed.add_metric([topic], count)
        yield consumed
        applied = _counter("patronage_events_applied", "Events applied to a profile.")
        applied.add_metric([], r.counters["applied"])
        yield applied
        dedup = _counter(
            "patronage_events_deduplicated", "Redelivered or duplicate events.", ("kind",)
        )
        dedup.add_metric(["offset"], r.counters["duplicate_offsets"])
        dedup.add_metric(["event_id"], r.counters["duplicate_events"])
        yield dedup
        for name, doc, label, counts in (
            ("patronage_events_rejected", "Events sent to the DLQ, by reason.", "reason",
             r.rejected),
            ("patronage_events_corrected", "Corrections made to kept events.", "correction",
             r.corrected),
            ("patronage_lines_dropped",
             "Receipt lines dropped (line-level dead letters) from receipts that were kept.",
             "reason", r.lines_dropped),
        ):  # fmt: skip
            family = _counter(name, doc, ("topic", label))
            for (topic, code), count in sorted(counts.items()):
                family.add_metric([topic, code], count)
            yield family
        resets = _counter(
            "patronage_source_resets",
            "Topic partitions whose offsets restarted (re-created topic, truncated log).",
        )
        resets.add_metric([], r.counters["source_resets"])
        yield resets
        prepared = _counter(
            "patronage_batches_prepared",
            "Input batches validated, by where: the worker itself, its prepare process "
            "(large batches, PATRONAGE_PREPARE_PROCESS), or the worker after that failed.",
            ("where",),
        )
        for where in ("worker", "process", "worker_after_failure"):
            prepared.add_metric([where], r.counters[f"batches_prepared_in_{where}"])
        yield prepared
        helper = self.pipeline.prepare_process
        restarts = _counter(
            "patronage_prepare_process_restarts",
            "Prepare processes started again after the last one died (the OOM killer, a kill).",
        )
        restarts.add_metric([], helper.restarts if helper else 0)
        yield restarts
        compiled_in_use = _gauge(
            "patronage_compiled_modules",
            "1 if this worker validates, reads and scores profiles with the mypyc-compiled modules "
            "(patronage/compiled.py), 0 if with their Python sources.",
        )
        compiled_in_use.add_metric([], 1 if compiled.in_use() else 0)
        yield compiled_in_use

    def _redis(self) -> Iterator[Metric]:
        retries = _counter("patronage_redis_retries", "Batches retried because Redis failed.")
        retries.add_metric([], self.stats.counters["redis_retries"])
        yield retries
        up = _gauge("patronage_redis_up", "1 if the last Redis round trip succeeded.")
        up.add_metric([], 1 if self.pipeline.retry.ok else 0)
        yield up

    def _lag(self) -> Iterator[Metric]:
        r = self.monitor
        labels = ("topic", "partition")
        lag = _gauge(
            "patronage_consumer_lag_records",
            "Log end offset minus the group's committed offset (whole group, read from Kafka).",
            labels,
        )
        waiting = _gauge(
            "patronage_consumer_oldest_waiting_seconds",
            "How long the oldest record not yet committed has waited in the partition.",
            labels,
        )
        for row in r.lag_rows:
            lag.add_metric([row.topic, str(row.partition)], row.lag)
            waiting.add_metric([row.topic, str(row.partition)], row.oldest_waiting_s)
        yield lag
        yield waiting
        now = time.time()
        behind = _gauge(
            "patronage_event_time_lag_seconds",
            "Now minus the event time of the last event applied by this worker, per partition.",
            labels,
        )
        newest = _gauge(
            "patronage_last_event_timestamp_seconds",
            "Event time of the newest applied event per partition.",
            labels,
        )
        for (topic, partition), ts in sorted(self.stats.last_event_ts.items()):
            behind.add_metric([topic, str(partition)], now - ts / 1000)
            newest.add_metric([topic, str(partition)], ts / 1000)
        yield behind
        yield newest

    def _promotions(self) -> Iterator[Metric]:
        learner = self.pipeline.learner
        total = _counter(
            "patronage_segment_promotions", "Model versions this worker promoted (the learner)."
        )
        total.add_metric([], learner.promoted)
        yield total
        hour = _gauge(
            "patronage_segment_promotions_last_hour", "Promotions by this worker in the last hour."
        )
        hour.add_metric([], learner.promotions_last_hour())
        yield hour
        skipped = _counter(
            "patronage_segment_promotions_skipped",
            "Refits not promoted, by reason (small_shift: no centre moved enough).",
            ("reason",),
        )
        for reason in ("small_shift",):
            skipped.add_metric([reason], learner.skipped[reason])
        yield skipped
        shift = _gauge(
            "patronage_segment_model_shift",
            "Largest centre move of the last refit, in standard deviations.",
        )
        shift.add_metric([], learner.last_shift or 0.0)
        yield shift
        fits = _counter(
            "patronage_prediction_fits",
            "Refits of the prediction parameters by this worker (the learner), by outcome "
            "(kept_previous: too few customers, unusable or worse; failed: an error; "
            "the log says why).",
            ("outcome",),
        )
        for outcome in ("fitted", "kept_previous", "failed"):
            fits.add_metric([outcome], learner.fits[outcome])
        yield fits
        restarts = _counter(
            "patronage_fit_process_restarts",
            "Fit processes started again after the last one died (the OOM killer, a kill).",
        )
        restarts.add_metric([], learner.executor.restarts if learner.executor else 0)
        yield restarts
        version = _gauge(
            "patronage_prediction_parameters_version",
            "Version of the prediction parameters the learner last saw or fitted.",
        )
        version.add_metric([], learner.parameters_version)
        yield version

    def _rescoring(self) -> Iterator[Metric]:
        segmenter, task = self.pipeline.segmenter, self.pipeline.rescoring
        running = _gauge(
            "patronage_segment_rescore_running",
            "1 while a re-scoring pass (after a promotion) runs on this worker.",
        )
        running.add_metric([], int(task is not None and not task.done()))
        yield running
        customers = _counter(
            "patronage_segment_rescored_customers", "Customers read by re-scoring passes."
        )
        customers.add_metric([], segmenter.rescored)
        yield customers
        busy = _counter(
            "patronage_segment_rescore_busy_seconds",
            "Time re-scoring passes took, without the rests that keep them to "
            "PATRONAGE_BACKGROUND_PASS_SHARE of the worker's time.",
        )
        busy.add_metric([], segmenter.rescore_busy_s)
        yield busy
        restarts = _counter(
            "patronage_segment_rescore_restarts",
            "Passes restarted because a newer model arrived while they ran.",
        )
        restarts.add_metric([], segmenter.restarts)
        yield restarts

    def _sweeps(self) -> Iterator[Metric]:
        sweeper = self.pipeline.sweeper
        sweep = _gauge(
            "patronage_lapse_sweep_duration_seconds", "Duration of the last lapse sweep."
        )
        sweep.add_metric([], sweeper.last_duration_s)
        yield sweep
        judged = _counter(
            "patronage_sweep_customers_judged",
            "Customers the sweeps judged, by queue (lapse; risk: at-risk moments, and "
            "each buyer once after a purchase).",
            ("queue",),
        )
        for queue in ("lapse", "risk"):
            judged.add_metric([queue], sweeper.judged[queue])
        yield judged

    def _lapse_and_segments(self) -> Iterator[Metric]:
        r = self.pipeline
        alerts = _counter("patronage_lapse_alerts", "Lapse alerts sent, by kind.", ("kind",))
        for kind in ("lapsed", "reactivated"):
            alerts.add_metric([kind], self.stats.alerts[kind])
        alerts.add_metric(["at_risk"], r.predictor.at_risk_alerts)
        yield alerts
        stitching = _counter(
            "patronage_identity",
            "Identity stitching: changes of people sent, links refused, lapse findings of "
            "a part dropped because its person was seen under another identifier.",
            ("outcome",),
        )
        stitching.add_metric(["person_changes"], r.stitcher.changes)
        stitching.add_metric(["links_refused"], r.stitcher.refused)
        stitching.add_metric(
            ["lapse_not_for_person"], self.stats.counters["lapse_findings_not_for_person"]
        )
        yield stitching
        tiers = _counter(
            "patronage_tier_changes",
            "Value tier changes sent, by reason (profile: an update; refit: new parameters).",
            ("reason",),
        )
        for reason in ("profile", "refit"):
            tiers.add_metric([reason], r.predictor.tier_changes[reason])
        yield tiers
        yield from self._sweeps()
        changes = _counter(
            "patronage_segment_changes", "Segment changes sent, by reason.", ("reason",)
        )
        for reason, count in sorted(r.segmenter.changes.items()):
            changes.add_metric([reason], count)
        yield changes
        yield from self._promotions()
        yield from self._rescoring()
        version = _gauge(
            "patronage_segment_model_version", "Model version this worker scores with."
        )
        model = r.segmenter.model
        version.add_metric([], model.version if model else 0)
        yield version
        sizes = _gauge(
            "patronage_segment_customers", "Customers per segment (whole deployment).", ("segment",)
        )
        for segment, count in sorted(self.monitor.segment_sizes.items()):
            sizes.add_metric([str(segment)], count)
        yield sizes
