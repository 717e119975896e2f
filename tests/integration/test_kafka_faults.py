"""Kafka broker restart and Kafka SASL/PLAIN, on a private real broker.

The shared broker of `make services` is never touched: these tests start
their own Apache Kafka (same jars) on free ports.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.integration.harness import (
    Worker,
    drained,
    prepare_topics,
    settings_for,
    settings_with_topics,
    wait_for,
)
from tests.integration.private_kafka import LIBS, PrivateKafka
from tests.integration.test_end_to_end import (
    assert_profiles_match,
    build_stream,
    export,
    publish_with_metadata,
    recompute,
)
from tests.integration.test_reliability import record


@pytest.fixture
def kafka_jars() -> Path:
    if not any(LIBS.glob("kafka_2.13-*.jar")):
        message = "Kafka jars missing; run `make services`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return LIBS


@pytest.fixture
def private_kafka(tmp_path: Path, kafka_jars: Path) -> Iterator[PrivateKafka]:
    broker = PrivateKafka(tmp_path / "kafka").start()
    yield broker
    broker.stop()


def test_broker_restart_mid_stream(
    isolated_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    env = {
        **isolated_env,
        "PATRONAGE_KAFKA_BOOTSTRAP": private_kafka.bootstrap,
        "PATRONAGE_COMMIT_INTERVAL_S": "0.5",
        "PATRONAGE_LAG_INTERVAL_S": "1",
    }
    settings = settings_with_topics(env)
    now_ms = int(time.time() * 1000)
    good, stream = build_stream(now_ms)
    half = len(stream) // 2
    worker = Worker(env, name="broker-restart").start()
    try:
        publish_with_metadata(settings, stream[:half])
        time.sleep(random.Random(3).uniform(0.5, 1.5))
        private_kafka.stop()  # mid-stream, with the worker connected
        down_at = time.monotonic()
        time.sleep(5)
        private_kafka.start()
        restarted = time.monotonic() - down_at
        publish_with_metadata(settings, stream[half:])
        started = time.monotonic()
        wait_for(
            lambda: drained(settings), 240, "drain after the broker restart", worker.check_alive
        )
        recovery = time.monotonic() - started
        pid_unchanged = worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()
    assert pid_unchanged, "the worker had to be restarted by hand"
    profiles = export(env, tmp_path / "after-broker-restart.jsonl")
    expected = recompute(good)
    assert_profiles_match(profiles, expected)
    record(
        "kafka broker restart",
        events=len(stream),
        broker_down_s=round(restarted, 1),
        drain_after_restart_s=round(recovery, 1),
        worker_restarts=0,
    )


def test_sasl_plain(isolated_env: dict[str, str], tmp_path: Path, kafka_jars: Path) -> None:
    broker = PrivateKafka(tmp_path / "sasl", sasl_users={"admin": "admin-pw", "patronage": "p-pw"})
    broker.start()
    try:
        env = {
            **isolated_env,
            "PATRONAGE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "PATRONAGE_KAFKA_SASL_MECHANISM": "PLAIN",
            "PATRONAGE_KAFKA_SASL_USERNAME": "patronage",
            "PATRONAGE_KAFKA_SASL_PASSWORD": "p-pw",
            "PATRONAGE_COMMIT_INTERVAL_S": "0.5",
        }
        settings = settings_with_topics(env)
        now_ms = int(time.time() * 1000)
        _, stream = build_stream(now_ms)
        publish_with_metadata(settings, stream[:1500])
        worker = Worker(env, name="sasl").start()
        try:
            wait_for(lambda: drained(settings), 120, "drain over SASL", worker.check_alive)
        finally:
            worker.stop()
        profiles = export(env, tmp_path / "sasl.jsonl")
        assert sum(p["events_applied"] for p in profiles.values()) > 0
        assert "p-pw" not in worker.log_path.read_text(errors="replace")

        wrong = settings_for({**env, "PATRONAGE_KAFKA_SASL_PASSWORD": "nope"})
        # aiokafka logs SaslAuthenticationFailed and gives up bootstrapping.
        with pytest.raises(Exception, match=r"(?i)auth|sasl|unable to bootstrap"):
            prepare_topics(wrong)
    finally:
        broker.stop()
    print(json.dumps({"sasl_profiles": len(profiles)}))
