"""The learner's fit process, which exits with its worker.

A worker killed outright (SIGKILL, the OOM killer) cannot shut its pool
down, and the fit process it had spawned waited on its pipe for ever: every
such kill left one behind (~90 MB each; the fault tests left six per suite
run). The fit process now checks every second that its parent is still the
worker that started it, and exits when it is not.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor


def _exit_with_parent(parent_pid: int, interval_s: float) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def fit_pool(interval_s: float = 1.0) -> ProcessPoolExecutor:
    """One spawned process for the fits (in a thread they still took the GIL
    from ingest: scipy's optimiser is mostly Python)."""
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(), interval_s),
    )
