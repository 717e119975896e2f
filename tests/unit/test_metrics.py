"""/metrics is valid Prometheus exposition with correct metric semantics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from patronage.streams.settings import Settings
from patronage.streams.worker import Runtime


def families(runtime: Runtime) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(runtime.metrics.render().decode()):
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_batch_size_is_a_histogram_whose_count_and_sum_only_grow() -> None:
    """The hand-built summary was computed from the last 1,000 batches: its
    `_count` stopped at 1,000 and its `_sum` could go down."""
    runtime = Runtime(Settings())
    sums = []
    for n in range(1500):
        runtime.metrics.batch_size.observe(2000 if n < 1000 else 1)
        if n % 250 == 249:
            sums.append(families(runtime)["patronage_batch_size_sum"][""])
    seen = families(runtime)
    assert seen["patronage_batch_size_count"][""] == 1500
    assert sums == sorted(sums) and sums[-1] == 1000 * 2000 + 500
    assert seen["patronage_batch_size_bucket"]["le=1.0"] == 500


def test_counts_are_exposed_with_their_labels() -> None:
    runtime = Runtime(Settings())
    stats = runtime.pipeline.stats
    stats.counters["applied"] += 7
    stats.rejected[("clicks", "schema")] += 2
    stats.lines_dropped[("store-receipts", "absurd_quantity")] += 3
    seen = families(runtime)
    assert seen["patronage_events_applied_total"][""] == 7
    assert seen["patronage_events_rejected_total"]["reason=schema,topic=clicks"] == 2
    assert seen["patronage_lines_dropped_total"]["reason=absurd_quantity,topic=store-receipts"] == 3
    assert not any(name.endswith("_created") for name in seen)


def test_the_customers_each_sweep_queue_judged_are_counted() -> None:
    """A sweep of real due entries (the in-memory store, a lapse entry the
    clock has passed and an at-risk one): the two queues' judgements are
    counted apart and exposed."""
    import asyncio

    from patronage.models.timeunits import DAY_MS
    from patronage.streams.memory import MemoryModelStore, MemoryProfileStore, RecordingProducer
    from patronage.streams.pipeline import Pipeline

    settings = Settings(lapse_clock="wall")
    now_ms = 1_767_225_600_000
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(
        settings, store, MemoryModelStore(), RecordingProducer(), clock=lambda: now_ms / 1000
    )
    store.due[0] = {"ann": now_ms - 2 * DAY_MS, "ben": now_ms + DAY_MS}
    store.risk[0] = {"cleo": now_ms - DAY_MS}
    asyncio.run(pipe.sweeper.sweep({0}))
    runtime = Runtime(settings)
    runtime.pipeline.sweeper = pipe.sweeper
    seen = families(runtime)["patronage_sweep_customers_judged_total"]
    assert seen == {"queue=lapse": 1, "queue=risk": 1}


def test_a_blocked_event_loop_shows_in_the_loop_lag_histogram() -> None:
    """A 70 ms stall (the length of the full collections that set the 1k
    events/s p99 before the worker froze its start-up objects) lands in the
    histogram above 50 ms."""
    import asyncio
    import time

    from patronage.streams.metrics import watch_loop_lag

    runtime = Runtime(Settings())
    histogram = runtime.metrics.loop_lag_seconds

    async def run() -> None:
        watcher = asyncio.create_task(watch_loop_lag(histogram.observe, interval_s=0.01))
        await asyncio.sleep(0.1)
        time.sleep(0.07)  # the loop is blocked: nothing else runs
        await asyncio.sleep(0.1)
        watcher.cancel()

    asyncio.run(run())
    seen = families(runtime)
    count = seen["patronage_event_loop_lag_seconds_count"][""]
    assert count >= 10
    assert seen["patronage_event_loop_lag_seconds_bucket"]["le=0.05"] <= count - 1
    assert seen["patronage_event_loop_lag_seconds_sum"][""] >= 0.06


def test_a_rescoring_pass_shows_while_it_runs() -> None:
    """Ops see a pass running and what it has cost so far (the latency
    benchmark splits its probes by this gauge)."""
    import asyncio

    runtime = Runtime(Settings())
    segmenter = runtime.pipeline.segmenter

    async def run() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        gate = asyncio.Event()
        runtime.pipeline.rescoring = asyncio.create_task(gate.wait())  # type: ignore[assignment]
        segmenter.rescored += 120
        segmenter.rescore_busy_s += 0.5
        segmenter.restarts += 1
        during = families(runtime)
        gate.set()
        await runtime.pipeline.rescoring
        return during, families(runtime)

    during, after = asyncio.run(run())
    assert during["patronage_segment_rescore_running"][""] == 1
    assert after["patronage_segment_rescore_running"][""] == 0
    assert after["patronage_segment_rescored_customers_total"][""] == 120
    assert after["patronage_segment_rescore_busy_seconds_total"][""] == 0.5
    assert after["patronage_segment_rescore_restarts_total"][""] == 1


def test_where_batches_were_prepared_and_helper_restarts_are_exposed() -> None:
    runtime = Runtime(Settings())
    stats = runtime.pipeline.stats
    stats.counters["batches_prepared_in_process"] += 4
    stats.counters["batches_prepared_in_worker_after_failure"] += 1
    assert runtime.pipeline.prepare_process is not None
    runtime.pipeline.prepare_process.restarts += 2
    seen = families(runtime)
    prepared = seen["patronage_batches_prepared_total"]
    assert prepared == {"where=process": 4, "where=worker": 0, "where=worker_after_failure": 1}
    assert seen["patronage_prepare_process_restarts_total"][""] == 2
    without = families(Runtime(Settings(prepare_process=False)))
    assert without["patronage_prepare_process_restarts_total"][""] == 0


def test_which_form_of_the_ingest_modules_runs_is_exposed() -> None:
    from patronage import compiled

    seen = families(Runtime(Settings()))["patronage_compiled_modules"][""]
    assert seen == (1 if compiled.in_use() else 0)
    if compiled.mode() == "on":  # `make test`: the compiled modules
        assert seen == 1
