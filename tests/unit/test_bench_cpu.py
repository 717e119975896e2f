"""The throughput benchmark's CPU per event counts the drain only, as a
table: the start-up (imports, joining the group) once made a worker's CPU
per event look 30-50 % dearer than the Redis and broker columns beside it,
which were already counted from the drain's start."""

from __future__ import annotations

import pytest

from benchmarks.bench import _cpu_spent

CASES = [
    # (before, after, name, CPU spent in the drain)
    ({"process": 4.0}, {"process": 10.5}, "process", 6.5),
    ({"redis": 1.0}, {"redis": 3.0}, "redis", 2.0),
    # a helper process started during the drain counts from 0
    ({"helper": None}, {"helper": 2.5}, "helper", 2.5),
    ({"helper": 1.0}, {"helper": 2.5}, "helper", 1.5),
    # a server that could not be read at either end: no figure
    ({"kafka": None}, {"kafka": 3.0}, "kafka", None),
    ({"kafka": 1.0}, {"kafka": None}, "kafka", None),
    # a job without helpers
    ({"helper": None}, {"helper": None}, "helper", None),
]


@pytest.mark.parametrize(("before", "after", "name", "expected"), CASES)
def test_cpu_is_counted_from_the_drain_on(
    before: dict[str, float | None],
    after: dict[str, float | None],
    name: str,
    expected: float | None,
) -> None:
    assert _cpu_spent(before, after, name) == expected
