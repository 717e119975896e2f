"""Ops: lag in offsets and seconds, readiness, on real Kafka and a real Redis.

The test runs its own redis-server (a private port) so it can stop and start
it: a backlog builds while the worker is down and while Redis is down;
`patronage lag show` and /metrics must report it, /readyz must turn 503 within
seconds of Redis going away and 200 when it returns, and both lag figures
must go to zero once the worker can apply again.
"""

from __future__ import annotations

import json
import time

from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from tests.integration.harness import (
    Worker,
    cli_lag,
    drained,
    metric_sum,
    settings_with_topics,
    wait_for,
)
from tests.integration.private_redis import PrivateRedis
from tests.integration.test_end_to_end import as_messages, publish_with_metadata


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


def test_a_caught_up_worker_commits_without_waiting_for_the_interval(
    isolated_env: dict[str, str],
) -> None:
    """Once everything fetched is applied, the group's lag reads zero — not
    at the next commit, a minute away here. Ops read the lag from the broker's
    committed offsets, which a mock consumer would not keep: the real Kafka."""
    env = {**isolated_env, "PATRONAGE_COMMIT_INTERVAL_S": "60"}
    settings = settings_with_topics(env)
    now = int(time.time() * 1000)
    events, _ = generate(customers=20, days=10, seed=8, start_ms=(now // DAY_MS - 11) * DAY_MS)
    worker = Worker(env).start()
    try:
        publish_with_metadata(settings, as_messages(events))
        wait_for(lambda: drained(settings), 30, "the group's lag to read zero", worker.check_alive)
    finally:
        worker.stop()
