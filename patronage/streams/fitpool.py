"""The worker's helper processes (the learner's fits, the ingest loop's
batch preparing), each of which exits with its worker and is started again
when it dies.

A worker killed outright (SIGKILL, the OOM killer) cannot shut its pool
down, and the fit process it had spawned waited on its pipe for ever: every
such kill left one behind (~90 MB each; the fault tests left six per suite
run). The fit process now checks every second that its parent is still the
worker that started it, and exits when it is not.

The other way round, a fit process that dies (the OOM killer picks the
largest process; a kill by hand) leaves its pool broken for good: every fit
after it failed, so the worker went on ingesting with its segment model and
prediction parameters frozen until it was restarted. `FitProcess` starts a
new one and runs the fit again.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

log = logging.getLogger("patronage.learner")

T = TypeVar("T")


def _start_helper(
    parent_pid: int, interval_s: float, niceness: int, name: str = "", warm: tuple[str, ...] = ()
) -> None:
    """In the new process: name it, lower its priority, watch its parent,
    then import what its work needs (`warm`: a spawned process imports only
    the worker's entry module by itself)."""
    if name:
        name_process(name)
    if niceness:
        os.nice(niceness)
    _exit_with_parent(parent_pid, interval_s)
    for module in warm:
        importlib.import_module(module)
    # What start-up made lives as long as the process: out of every collection.
    gc.collect()
    gc.freeze()


def process_name(role: str) -> str:
    """What ps and top show for a worker's helper (Linux keeps 15 bytes):
    patronage-fit, patronage-prep."""
    return f"patronage-{role[:4]}"


def name_process(name: str) -> None:
    """Set this process's name as ps, top and pgrep show it (the command line
    of every helper reads `python -c from multiprocessing.spawn ...`, which
    left ops unable to tell the fits from the preparing). Linux only; a
    no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        log.debug("could not name the process %s", name)


def _exit_with_parent(parent_pid: int, interval_s: float) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def fit_pool(
    interval_s: float = 1.0,
    niceness: int = 0,
    name: str = "",
    processes: int = 1,
    warm: tuple[str, ...] = (),
) -> ProcessPoolExecutor:
    """Spawned processes (the fits in a thread still took the GIL from
    ingest: scipy's optimiser is mostly Python), `niceness` steps below
    the worker's priority, each importing the `warm` modules as it starts;
    each is started when work finds none idle."""
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_helper,
        initargs=(os.getpid(), interval_s, niceness, name, warm),
    )


class FitProcess:
    """A helper process (or `processes` of them), a new one when one died.
    `role` names it in the log ("fit", "prepare"); `niceness` lowers its
    priority (the fits are background work: on a saturated host they
    should wait, not the ingest path); `warm` names the modules its work
    imports, which each of its processes imports as it starts."""

    def __init__(
        self,
        interval_s: float = 1.0,
        role: str = "fit",
        niceness: int = 0,
        processes: int = 1,
        warm: tuple[str, ...] = (),
    ) -> None:
        self.interval_s = interval_s
        self.role = role
        self.niceness = niceness
        self.processes = processes
        self.warm = warm
        self.pool = fit_pool(interval_s, niceness, process_name(role), processes, warm)
        self.restarts = 0  # processes started again after one died

    def start(self) -> None:
        """Start every process now, each importing the modules its work
        needs, without waiting for them (a spawned process takes a second
        or two of CPU to import; in the first batches of a catch-up, the
        second prepare process's start-up and the fit modules' imports —
        scipy.optimize — took 8 % of the drain's CPU). Called on every
        assignment of the learner's partition, inside Faust's rebalance
        callback, where raising would stop the worker: a pool whose process
        died is replaced, one shut down (the worker is stopping) is left so."""
        try:
            self._spawn_all()
        except BrokenProcessPool:
            self._replace()
            self._spawn_all()
        except RuntimeError:  # shut down
            log.debug("the %s process is shut down; not started", self.role)

    def _spawn_all(self) -> None:
        # A task a process: each submit that finds none idle spawns one,
        # which imports its modules as it starts (`_start_helper`).
        for _ in range(self.processes):
            self.pool.submit(os.getpid)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the helper process; once again in a new process if
        it died (what runs there is pure: running it twice is safe)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, fn, *args)
        except BrokenProcessPool:
            self._replace()
            return await loop.run_in_executor(self.pool, fn, *args)

    def _replace(self) -> None:
        """A new pool for one whose process died."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = fit_pool(
            self.interval_s, self.niceness, process_name(self.role), self.processes, self.warm
        )
        self.restarts += 1
        log.warning("the %s process died; started a new one", self.role)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
