"""Ops: lag in offsets and seconds, readiness, on real Kafka and a real Redis.

The test runs its own redis-server (a private port) so it can stop and start
it: a backlog builds while the worker is down and while Redis is down;
`patronage lag` and /metrics must report it, /readyz must turn 503 within
seconds of Redis going away and 200 when it returns, and both lag figures
must go to zero once the worker can apply again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patronage.models.simulate import DAY_MS, generate
from tests.conftest import IN_CI
from tests.integration.harness import (
    Worker,
    free_port,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import as_messages, publish_with_metadata


class PrivateRedis:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.dir = directory
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "private redis")

    def _answers(self) -> bool:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *auth, "ping"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() == "PONG"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server not installed; run `make services`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def cli_lag(env: dict[str, str]) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-m", "patronage.streams.cli", "lag"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    return int(total[1]), float(total[2])


def metric_sum(body: bytes, name: str) -> float:
    pattern = re.compile(rb"^" + name.encode() + rb"(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)
    return sum(float(v) for v in pattern.findall(body))


def test_backlog_is_reported_and_drains(
    isolated_env: dict[str, str], private_redis: PrivateRedis
) -> None:
    env = {
        **isolated_env,
        "PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0",
        "PATRONAGE_LAG_INTERVAL_S": "1",
        "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
        "PATRONAGE_REDIS_RETRY_MAX_S": "1",
    }
    settings = settings_with_topics(env)
    now = int(time.time() * 1000)
    events, _ = generate(customers=60, days=30, seed=4, start_ms=(now // DAY_MS - 31) * DAY_MS)
    published = publish_with_metadata(
        settings,
        as_messages(events),
    )
    time.sleep(2)

    # Worker stopped: Kafka itself says how far behind the group is.
    lag, waiting = cli_lag(env)
    assert lag == len(published)
    assert waiting >= 2.0

    # Worker up, Redis down: it consumes nothing it cannot apply.
    private_redis.stop()
    worker = Worker(env).start()
    try:
        wait_for(lambda: worker.http("/readyz")[0] == 503, 10, "/readyz to report redis down")
        reason = json.loads(worker.http("/readyz")[1])["checks"]["redis"]
        assert reason.startswith("unreachable")

        def metrics_backlog() -> bool:
            status, body = worker.http("/metrics")
            return (
                status == 200
                and metric_sum(body, "patronage_consumer_lag_records") == len(published)
                and metric_sum(body, "patronage_consumer_oldest_waiting_seconds") > 0
            )

        wait_for(metrics_backlog, 20, "/metrics to show the backlog in records and seconds")
        assert cli_lag(env)[0] == len(published)  # nothing committed while Redis is down

        private_redis.start()
        started = time.monotonic()
        wait_for(lambda: worker.http("/readyz")[0] == 200, 30, "/readyz back to 200")
        print(f"ready again {time.monotonic() - started:.1f}s after Redis returned")

        def drained() -> bool:
            status, body = worker.http("/metrics")
            return status == 200 and metric_sum(body, "patronage_consumer_lag_records") == 0

        wait_for(drained, 60, "/metrics lag to reach zero", worker.check_alive)
        assert cli_lag(env) == (0, 0.0)
        _, body = worker.http("/metrics")
        assert metric_sum(body, "patronage_consumer_oldest_waiting_seconds") == 0
        assert metric_sum(body, "patronage_events_applied_total") == len(published)
        assert metric_sum(body, "patronage_redis_retries_total") >= 1
    finally:
        worker.stop()
