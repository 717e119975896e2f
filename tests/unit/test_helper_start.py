"""The worker's helper processes are spawned while it starts, not during a
catch-up's first batches: a spawned process spends a second or two of CPU
importing the worker's modules, and on the 2-core machine that was taken
from the first batches of a drain (docs/benchmarks.md, "Helper processes
spawned with the worker")."""

from __future__ import annotations

import asyncio
import os

import pytest
from faust.types import TP

from patronage.streams.settings import Settings
from patronage.streams.worker import Runtime, build_app


def test_the_learner_starts_its_fit_process_when_the_features_are_assigned() -> None:
    settings = Settings()
    app, runtime = build_app(settings)
    started: list[str] = []
    runtime.fit_process.start = lambda: started.append("fit")  # type: ignore[method-assign]
    features = settings.topic(settings.topic_segment_features)

    async def assign() -> None:
        # A worker without the features partition is not the learner: no fit process.
        await app.on_partitions_assigned.send({TP(settings.topic(settings.topic_clicks), 0)})
        assert started == []
        await app.on_partitions_assigned.send({TP(features, 0), TP("other", 1)})

    asyncio.run(assign())
    assert started == ["fit"]


@pytest.mark.parametrize(("enabled", "expected"), [(True, ["fit", "prepare"]), (False, ["fit"])])
def test_the_helpers_are_started_with_the_worker(enabled: bool, expected: list[str]) -> None:
    """The fit process on every worker (any may become the learner at a
    rebalance: started at the assignment, its imports fell into a
    catch-up's first second), the prepare processes when it has them."""
    runtime = Runtime(Settings(prepare_process=enabled))
    started: list[str] = []
    runtime.fit_process.start = lambda: started.append("fit")  # type: ignore[method-assign]
    helper = runtime.pipeline.prepare_process
    if helper is not None:
        helper.start = lambda: started.append("prepare")  # type: ignore[method-assign]
    runtime.start_helpers()
    assert started == expected


def test_the_fit_process_runs_below_the_worker_and_the_prepare_process_beside_it() -> None:
    """A refit is background work: at the worker's priority, on the 2-core
    machine it took the CPU live events needed and their p99 went from
    ~25 to 100-200 ms while it ran (docs/benchmarks.md, "The learner's fit
    process below the worker"). The prepare process is on the ingest path
    and keeps the worker's priority. Real spawned processes: their
    niceness is what the kernel reports."""
    runtime = Runtime(Settings(fit_niceness=7, prepare_process=True))
    prepare = runtime.pipeline.prepare_process
    assert prepare is not None
    own = os.nice(0)
    try:
        fit_niceness = runtime.fit_process.pool.submit(os.nice, 0).result(timeout=60)
        prepare_niceness = prepare.pool.submit(os.nice, 0).result(timeout=60)
    finally:
        runtime.fit_process.shutdown()
        prepare.shutdown()
    assert fit_niceness == min(own + 7, 19)
    assert prepare_niceness == own
