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
