"""The fit process exits when its worker is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from patronage.streams.fitpool import fit_pool

if __name__ == "__main__":
    if sys.argv[1] == "plain":
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = fit_pool(interval_s=0.1)
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(60)
"""


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # (reaped between the open and the read: the read says ESRCH)
        return True
    return "State:\tZ" in state


def killed_parent_leaves(kind: str, tmp_path: Path) -> int:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), kind], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # as the OOM killer would
    parent.wait(10)
    return child


def test_the_fit_process_exits_when_its_worker_is_killed(tmp_path: Path) -> None:
    child = killed_parent_leaves("fit_pool", tmp_path)
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_a_plain_pool_would_have_stayed(tmp_path: Path) -> None:
    """The check above can fail: without the watch, the child outlives a
    killed parent (it is stopped here, by the PID this test started)."""
    child = killed_parent_leaves("plain", tmp_path)
    try:
        time.sleep(1.0)
        assert not gone(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_fit_process_that_died_is_started_again() -> None:
    """The OOM killer takes the largest process, often the fit process: its
    pool was then broken for good, and every later promotion and prediction
    fit failed while the worker went on ingesting. A real process is killed
    here: a mock pool would not break the way concurrent.futures does."""
    import asyncio

    from patronage.streams.fitpool import FitProcess

    fits = FitProcess(interval_s=0.1, niceness=3)

    async def scenario() -> tuple[int, int, int, int]:
        first = await fits.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not gone(first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        second = await fits.run(os.getpid)
        third = await fits.run(os.getpid)
        return first, second, third, await fits.run(os.nice, 0)

    try:
        first, second, third, niceness = asyncio.run(scenario())
        name = Path(f"/proc/{second}/comm").read_text().strip()
    finally:
        fits.shutdown()
    seen = f"pids {first}, {second}, {third}; restarts {fits.restarts}; nice {niceness}; {name!r}"
    assert second != first and third == second, seen  # a new process, then kept
    assert fits.restarts == 1, seen
    assert niceness == min(os.nice(0) + 3, 19), seen  # the new one as far below the worker
    assert name == "patronage-fit", seen  # and named as the first was


def test_helpers_are_named_for_ps_and_top() -> None:
    """Every helper's command line reads `python -c from multiprocessing.spawn
    import spawn_main ...`: without a name, ops (and the throughput
    benchmark's CPU columns) could not tell the fits from the preparing."""
    from patronage.streams.fitpool import FitProcess

    names = {}
    for role in ("fit", "prepare"):
        helper = FitProcess(interval_s=0.1, role=role)
        try:
            pid = helper.pool.submit(os.getpid).result(timeout=60)
            names[role] = Path(f"/proc/{pid}/comm").read_text().strip()
        finally:
            helper.shutdown()
    assert names == {"fit": "patronage-fit", "prepare": "patronage-prep"}


def test_starting_a_fit_process_that_died_starts_a_new_one() -> None:
    """`start` runs in Faust's rebalance callback on every assignment of the
    learner's partition (streams/worker.py): on a pool a killed process had
    broken, `submit` raised there and would have stopped the worker. After
    shut-down (the worker stopping) it does nothing."""
    from patronage.streams.fitpool import FitProcess

    fits = FitProcess(interval_s=0.1)
    try:
        first = fits.pool.submit(os.getpid).result(timeout=60)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        # the pool marks itself broken once its manager thread saw the death
        while not fits.pool._broken and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fits.pool._broken
        fits.start()
        second = fits.pool.submit(os.getpid).result(timeout=60)
        assert second != first and fits.restarts == 1
    finally:
        fits.shutdown()
    fits.start()  # shut down: no error, no process
    assert fits.restarts == 1


def _imported(module: str) -> tuple[int, bool]:
    time.sleep(0.3)  # held, so the other process takes the next one
    return os.getpid(), module in sys.modules


def test_start_spawns_every_process_with_the_modules_its_work_imports() -> None:
    """Started with one task, a pool of two spawned its second process at
    the second batch of a catch-up, and the fit process imported
    scipy.optimize at its first fit: both in the first second of a drain,
    6-8 % of its CPU (docs/benchmarks.md, "Helpers warm before the first
    batch"). Real processes: what counts is what the spawned ones did."""
    from patronage.streams.fitpool import FitProcess

    # A module neither the test run nor a spawned helper imports by itself.
    assert "colorsys" not in sys.modules
    helper = FitProcess(interval_s=0.1, role="prepare", processes=2, warm=("colorsys",))
    try:
        helper.start()
        spawned = len(helper.pool._processes)  # before any work was submitted
        seen = [
            future.result(timeout=60)
            for future in [helper.pool.submit(_imported, "colorsys") for _ in range(2)]
        ]
    finally:
        helper.shutdown()
    assert spawned == 2
    assert all(imported for _, imported in seen), seen
    assert "colorsys" not in sys.modules  # imported there, not here
