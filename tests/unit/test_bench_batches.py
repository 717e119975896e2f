"""The latency benchmark's batch count, as a table: how many input batches
the worker made while the load was offered (a live batch costs the worker
about the same whatever it holds, so a faster apply that makes more,
smaller batches can cost it more: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from benchmarks.bench import batch_totals, batches_between, latency_by_window

METRICS = """# HELP patronage_batch_size Records per processed batch.
# TYPE patronage_batch_size histogram
patronage_batch_size_bucket{le="1.0"} 3.0
patronage_batch_size_count 412.0
patronage_batch_size_sum 2060.0
patronage_batch_redis_seconds_count 412.0
"""


def test_totals_are_the_histograms_count_and_sum() -> None:
    assert batch_totals(METRICS) == (412.0, 2060.0)
    assert batch_totals("patronage_batch_size_count 1.0\n") is None
    assert batch_totals("") is None


CASES = [
    # (readings (when, batches, records), start, end, batches/s, records/batch)
    ([(1.0, 100, 500), (3.0, 500, 2500)], 0.0, 5.0, 200.0, 5.0),
    # readings outside the offered window are left out
    ([(0.5, 0, 0), (1.0, 100, 500), (2.0, 150, 1500), (9.0, 900, 9000)], 1.0, 2.0, 50.0, 20.0),
    # fewer than two readings inside: no figure
    ([(1.0, 100, 500)], 0.0, 5.0, None, None),
    ([], 0.0, 5.0, None, None),
    # no batch in between: a rate of 0 and no size
    ([(1.0, 100, 500), (2.0, 100, 500)], 0.0, 5.0, 0.0, None),
]


@pytest.mark.parametrize(("readings", "start", "end", "rate", "size"), CASES)
def test_batches_between(
    readings: list[tuple[float, float, float]],
    start: float,
    end: float,
    rate: float | None,
    size: float | None,
) -> None:
    got = batches_between(readings, start, end)
    assert got == {"batches_per_second": rate, "records_per_batch": size}


def test_latency_by_window_splits_the_probes_by_when_they_were_acked() -> None:
    # (acked, seen) in perf_counter seconds; the run started at 100.0
    probes = {
        "a": (100.1, 100.11),  # window 0: 10 ms
        "b": (104.9, 104.93),  # window 0: 30 ms
        "c": (105.0, 105.5),  # window 1: 500 ms
        "d": (112.0, 112.002),  # window 2: 2 ms
    }
    got = latency_by_window(probes, 100.0, 5.0)
    assert [w["from_s"] for w in got] == [0.0, 5.0, 10.0]
    assert [w["probes"] for w in got] == [2, 1, 1]
    assert got[0]["p50_ms"] == pytest.approx(30.0, abs=0.1)  # nearest rank: the upper
    assert got[1]["p99_ms"] == pytest.approx(500.0, abs=0.1)
    assert got[2]["p50_ms"] == pytest.approx(2.0, abs=0.1)
    assert latency_by_window({}, 100.0, 5.0) == []
