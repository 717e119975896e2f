"""The throughput benchmark's CPU per event counts the drain only, as a
table: the start-up (imports, joining the group) once made a worker's CPU
per event look 30-50 % dearer than the Redis and broker columns beside it,
which were already counted from the drain's start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import LATENCY_CPU, _cpu_snapshot, _cpu_spent

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
    # each helper apart: the learner's fit process started during the drain
    ({"helper_fit": None}, {"helper_fit": 1.5}, "helper_fit", 1.5),
    ({"helper_prepare": 0.5}, {"helper_prepare": 2.0}, "helper_prepare", 1.5),
]


@pytest.mark.parametrize(("before", "after", "name", "expected"), CASES)
def test_cpu_is_counted_from_the_drain_on(
    before: dict[str, float | None],
    after: dict[str, float | None],
    name: str,
    expected: float | None,
) -> None:
    assert _cpu_spent(before, after, name) == expected


PARENT = """
import os, time
from patronage.streams.fitpool import FitProcess

if __name__ == "__main__":
    helpers = {role: FitProcess(interval_s=0.1, role=role) for role in ("fit", "prepare")}
    helpers["prepare"].pool.submit(os.getpid).result(timeout=60)
    helpers["fit"].pool.submit(sum, range(30_000_000)).result(timeout=60)
    print("ready", flush=True)
    time.sleep(60)
"""


def test_each_helpers_cpu_is_counted_apart(tmp_path: Path) -> None:
    """The learner's fit process imports scipy at its first fit, often inside
    the drain: counted with the prepare process, it was read as preparing
    (4.5-6.4 µs an event). Real helper processes of a parent of their own
    (this process's other children stay out), one of them kept busy."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        snapshot = _cpu_snapshot({}, [parent])
    finally:
        parent.kill()  # its helpers exit with it (streams/fitpool.py)
        parent.wait(10)
    fit, prepare, both = (snapshot[k] for k in ("helper_fit", "helper_prepare", "helper"))
    assert fit is not None and prepare is not None and both is not None
    assert fit > prepare + 0.3
    assert fit + prepare <= both + 1e-9  # (multiprocessing's resource tracker too)


def test_the_latency_runs_cpu_shares_name_what_a_snapshot_holds() -> None:
    """A share whose name a snapshot does not hold is left out silently
    (as a helper not started is): a misspelt one would never be printed."""
    snapshot = _cpu_snapshot({"redis": None, "kafka": None}, [])
    assert set(LATENCY_CPU.values()) <= set(snapshot)
    assert {"worker", "redis", "broker"} <= set(LATENCY_CPU)
