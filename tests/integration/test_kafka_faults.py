"""Kafka broker restart, SASL (PLAIN, SCRAM) and TLS, on a private real broker.

The shared broker of `make services` is never touched: these tests start
their own Apache Kafka (same jars) on free ports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from patronage.models.simulate import generate
from patronage.streams.ingest import BatchIngest
from patronage.streams.kafka_admin import create_topics
from tests.conftest import IN_CI
from tests.integration.certificates import make_certificates
from tests.integration.harness import (
    Worker,
    drained,
    metric_sum,
    prepare_topics,
    settings_for,
    settings_with_topics,
    wait_for,
)
from tests.integration.private_kafka import LIBS, Listener, PrivateKafka
from tests.integration.test_end_to_end import (
    DAY_MS,
    as_messages,
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


def test_ingest_waits_for_a_broker_that_is_down_when_it_starts(
    isolated_env: dict[str, str], private_kafka: PrivateKafka
) -> None:
    """The broker restarting while ingest starts (after the worker's start-up
    steps reached it): ingest waits for it. It used to give up at the first
    failed bootstrap and stop the worker — seen once in the mid-stream
    restart test, when the broker went down before ingest had connected. A
    mocked consumer would not have shown it: it is aiokafka's bootstrap that
    fails. (Before those start-up steps, an unreachable Kafka stops
    `worker run` with the error, for the supervisor to start it again.)"""
    env = {**isolated_env, "PATRONAGE_KAFKA_BOOTSTRAP": private_kafka.bootstrap}
    settings = settings_with_topics(env)
    private_kafka.stop()

    async def run() -> None:
        ingest = BatchIngest(settings, pipeline=None)  # type: ignore[arg-type]
        starting = asyncio.create_task(ingest._start_consumer())
        await asyncio.sleep(4)
        assert not starting.done(), "ingest gave up while the broker was down"
        await asyncio.to_thread(private_kafka.start)
        consumer = await asyncio.wait_for(starting, 120)
        assert consumer is not None
        try:
            assert set(settings.input_topics) <= await consumer.topics()
        finally:
            await consumer.stop()

    asyncio.run(run())


def test_sasl_plain(isolated_env: dict[str, str], tmp_path: Path, kafka_jars: Path) -> None:
    broker = PrivateKafka(
        tmp_path / "sasl",
        listeners=(Listener("CLIENT", "SASL_PLAINTEXT", "PLAIN"),),
        users={"admin": "admin-pw", "patronage": "p-pw"},
    )
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


SCRAM_PASSWORD = "scram-pw-for-tests"
KEY_PASSWORD = "client-key-pw"


@pytest.mark.parametrize(
    "listener", ["SASL_SSL+SCRAM-SHA-256", "SASL_SSL+SCRAM-SHA-512", "SSL+client-certificate"]
)
def test_kafka_over_tls(
    isolated_env: dict[str, str],
    tmp_path: Path,
    kafka_jars: Path,
    listener: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker and every client the CLI makes talk TLS to a real broker.

    A mock would not show what can go wrong here: the broker's certificate
    verified against our CA (and refused without it), the SCRAM exchange,
    the client certificate a mutual-TLS listener insists on, and secrets kept
    out of the logs.
    """
    certificates = make_certificates(tmp_path / "certs")
    # The client key is stored encrypted, as it would be in production.
    encrypted_key = tmp_path / "certs" / "client-encrypted.key"
    subprocess.run(
        [
            "openssl", "pkey", "-in", str(certificates.client_key), "-aes256",
            "-passout", f"pass:{KEY_PASSWORD}", "-out", str(encrypted_key),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    scram = listener.startswith("SASL_SSL")
    mechanism = listener.partition("+")[2]
    broker = PrivateKafka(
        tmp_path / "kafka",
        listeners=(
            Listener("SECURE", "SASL_SSL", mechanism)
            if scram
            else Listener("SECURE", "SSL", client_auth=True),
        ),
        users={"patronage": SCRAM_PASSWORD},
        certificates=certificates,
    ).start()
    secure = {
        "PATRONAGE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "PATRONAGE_KAFKA_SSL_CA_FILE": str(certificates.ca),
    }
    if scram:
        secure |= {
            "PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PATRONAGE_KAFKA_SASL_MECHANISM": mechanism,
            "PATRONAGE_KAFKA_SASL_USERNAME": "patronage",
            "PATRONAGE_KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
        }
    else:
        secure |= {
            "PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PATRONAGE_KAFKA_SSL_CERT_FILE": str(certificates.client_cert),
            "PATRONAGE_KAFKA_SSL_KEY_FILE": str(encrypted_key),
            "PATRONAGE_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
        }
    try:
        env = {**isolated_env, **secure, "PATRONAGE_COMMIT_INTERVAL_S": "0.5"}
        settings = settings_with_topics(env)
        good, stream = build_stream(int(time.time() * 1000))
        publish_with_metadata(settings, stream)
        worker = Worker(env, name="kafka-tls").start()
        try:
            started = time.monotonic()
            wait_for(lambda: drained(settings), 180, "drain over TLS", worker.check_alive)
            drain_s = time.monotonic() - started
        finally:
            worker.stop()
        assert_profiles_match(export(env, tmp_path / "tls.jsonl"), recompute(good))
        log = worker.log_path.read_text(errors="replace")
        assert SCRAM_PASSWORD not in log and KEY_PASSWORD not in log

        # The same settings minus one piece of trust must be refused, and
        # aiokafka's log must say why (the exception only says "bootstrap").
        without_ca = {k: v for k, v in env.items() if k != "PATRONAGE_KAFKA_SSL_CA_FILE"}
        refusals = {"untrusted broker certificate": (without_ca, "CERTIFICATE_VERIFY_FAILED")}
        if scram:
            wrong = {**env, "PATRONAGE_KAFKA_SASL_PASSWORD": "nope"}
            refusals["wrong SCRAM password"] = (wrong, "SaslAuthenticationFailed")
        else:
            anonymous = {
                k: v
                for k, v in env.items()
                if k not in ("PATRONAGE_KAFKA_SSL_CERT_FILE", "PATRONAGE_KAFKA_SSL_KEY_FILE")
            }
            # The broker ends the handshake of a client without a certificate.
            refusals["no client certificate"] = (anonymous, "closed")
        errors = {}
        for why, (refused, reason) in refusals.items():
            caplog.clear()
            with (
                caplog.at_level(logging.WARNING, logger="aiokafka"),
                pytest.raises(KafkaConnectionError, match=r"(?i)unable to bootstrap"),
            ):
                prepare_topics(settings_for(refused))
                pytest.fail(f"connected despite: {why}")
            logged = " | ".join(r.getMessage() for r in caplog.records)
            assert reason in logged, (why, logged)
            errors[why] = logged[:200]
    finally:
        broker.stop()
    record(
        f"kafka over TLS ({listener})",
        events=len(stream),
        drain_s=round(drain_s, 1),
        refused=errors,
    )


def test_topic_recreated_while_the_worker_runs(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """A topic deleted and created again (or a truncated log, a mirror
    failover) restarts its offsets at 0. The per-source "last offset applied"
    of every profile would then take each new event for a redelivery and drop
    it silently; the worker must see that the log ends below offsets it has
    already seen, treat the partition as a new source and apply everything.
    Only a real broker shows how the consumer meets the new incarnation (an
    offset out of range, reset to the earliest record)."""
    from aiokafka.admin import AIOKafkaAdminClient

    env = {**isolated_env, "PATRONAGE_COMMIT_INTERVAL_S": "0.5", "PATRONAGE_PARTITIONS": "2"}
    settings = settings_with_topics(env)
    now_ms = int(time.time() * 1000)
    events, _ = generate(customers=30, days=20, seed=3, start_ms=now_ms - 21 * DAY_MS)
    clicks = [e for e in events if e["type"] == "click"]
    before, after = clicks[: len(clicks) // 2], clicks[len(clicks) // 2 :]
    # More before than after, so the new log ends below offsets already seen.
    before, after = before + after[: len(after) // 2], after[len(after) // 2 :]
    clicks_topic = settings.topic("clicks")

    async def recreate() -> None:
        admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())  # type: ignore[arg-type]
        await admin.start()
        try:
            await admin.delete_topics([clicks_topic])
            for _ in range(100):
                if clicks_topic not in set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        await create_topics(settings)

    def applied(worker: Worker) -> float:
        return metric_sum(worker.http("/metrics")[1], "patronage_events_applied_total")

    worker = Worker(env, name="recreate").start()
    try:
        publish_with_metadata(settings, as_messages(before))
        wait_for(
            lambda: applied(worker) == len(before), 90, "first stream applied", worker.check_alive
        )
        asyncio.run(recreate())
        publish_with_metadata(settings, as_messages(after))
        wait_for(
            lambda: applied(worker) == len(before) + len(after),
            120,
            "events of the re-created topic applied",
            worker.check_alive,
        )
        resets = metric_sum(worker.http("/metrics")[1], "patronage_source_resets_total")
    finally:
        worker.stop()
    assert resets >= 1
    profiles = export(env, tmp_path / "recreated.jsonl")
    expected = recompute(before + after)
    assert {c: profiles[c]["clicks"] for c in expected} == {
        c: row["clicks"] for c, row in expected.items()
    }
