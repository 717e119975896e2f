"""The benchmark stops the processes it started, even one that ignores
SIGTERM (a worker that did not stop once crashed the harness and was left
running)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from benchmarks.bench import stop_started

IGNORES_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def started(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_a_process_that_stops_on_sigterm_is_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    proc = started("import time; print('ready', flush=True); time.sleep(60)")
    stop_started([proc], grace_s=10)
    assert proc.returncode == -signal.SIGTERM
    assert capsys.readouterr().err == ""


def test_one_that_ignores_sigterm_is_killed_and_said(capsys: pytest.CaptureFixture[str]) -> None:
    stubborn, polite = (
        started(IGNORES_TERM),
        started("import time; print('ready', flush=True); time.sleep(60)"),
    )
    stop_started([stubborn, polite], grace_s=0.5)
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert f"process {stubborn.pid} did not stop" in capsys.readouterr().err
