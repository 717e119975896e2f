"""Run real worker processes and talk to the real services from tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.cluster import RedisCluster

from patronage.streams.kafka_admin import create_topics
from patronage.streams.lag import group_lag
from patronage.streams.settings import Settings, settings_with

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def settings_for(env: dict[str, str]) -> Settings:
    return settings_with(env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """`patronage worker run` as a child process, stopped by its own PID."""

    def __init__(self, env: dict[str, str], name: str = "worker") -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "PATRONAGE_WEB_PORT": str(self.port)}
        self.env.setdefault("PATRONAGE_LOG_LEVEL", "warn")
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{env.get('PATRONAGE_GROUP_ID', 'g')}-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patronage.streams.cli", "worker", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.http("/healthz")[0] == 200, 60, "worker web port", self.check_alive)
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def http(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def prepare_topics(settings: Settings) -> None:
    asyncio.run(create_topics(settings))


def settings_with_topics(env: dict[str, str]) -> Settings:
    """Settings for a test, with its topics created."""
    settings = settings_for(env)
    prepare_topics(settings)
    return settings


def publish_raw(settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) in order; returns how many were acknowledged."""

    async def run() -> int:
        producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5)  # type: ignore[arg-type]
        await producer.start()
        try:
            futures = [await producer.send(t, v, key=k) for t, k, v in messages]
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    return asyncio.run(run())


def drained(settings: Settings) -> bool:
    rows = asyncio.run(group_lag(settings))
    return all(r.lag == 0 for r in rows)


def read_topic(settings: Settings, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every record on `topic`, from the beginning."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            **settings.kafka_client_kwargs(),  # type: ignore[arg-type]
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
                if not batch and out:
                    break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def cli_lag(env: dict[str, str]) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-m", "patronage.streams.cli", "lag", "show"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    return int(total[1]), float(total[2])


def metric_value(body: bytes, name: str, **labels: str) -> float:
    """Sum of a sample's values whose labels include `labels` (any label order)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def metric_sum(body: bytes, name: str) -> float:
    pattern = re.compile(rb"^" + name.encode() + rb"(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)
    return sum(float(v) for v in pattern.findall(body))


def redis_client(env: dict[str, str]) -> redis.Redis:
    """A plain client for a test's own checks, on Redis or Redis Cluster as the
    settings say (a cluster client's SCAN walks every master)."""
    if env.get("PATRONAGE_REDIS_CLUSTER", "").lower() == "true":
        return RedisCluster.from_url(env["PATRONAGE_REDIS_URL"])  # type: ignore[return-value]
    return redis.Redis.from_url(env["PATRONAGE_REDIS_URL"])


def on_cluster(env: dict[str, str]) -> str:
    """A label for recorded figures: which Redis the run used."""
    return " (redis cluster)" if env.get("PATRONAGE_REDIS_CLUSTER", "").lower() == "true" else ""


def erase_by_cli(env: dict[str, str], customer_id: str) -> dict[str, Any]:
    """`patronage customer erase`, waiting for the worker's confirmation."""
    out = subprocess.run(
        [sys.executable, "-m", "patronage.streams.cli", "customer", "erase", customer_id],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    confirmation: dict[str, Any] = json.loads(out.stdout)
    return confirmation
