"""Shared fixtures. Integration tests use the real local Kafka and Redis
(`make services`); under CI=true a missing service fails the test, never skips it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.private_redis import PrivateRedis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KAFKA = os.environ.get("PATRONAGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("PATRONAGE_REDIS_URL", "redis://127.0.0.1:6379/0")


UNIT_TESTS = Path(__file__).parent / "unit"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Every core for a run of unit tests only (pure, no services: 64 s on
    one core, ~40 on two); none — one process, as before — for anything
    else, whose tests share the local Kafka and Redis and time what they
    measure."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if paths and all(p.is_relative_to(UNIT_TESTS.resolve()) for p in paths):
        return os.cpu_count() or 1
    return 0


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}; run `make services`"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_up() -> str:
    host, _, port = KAFKA.split(",")[0].rpartition(":")
    _require("Kafka", host, int(port))
    return KAFKA


@pytest.fixture(scope="session")
def redis_up() -> str:
    rest = REDIS_URL.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.partition(":")
    _require("Redis", host or "127.0.0.1", int(port or 6379))
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one node of a real 3-master Redis Cluster (started once per run)."""
    from tests.integration.redis_cluster import RedisCluster3, require_redis_server

    require_redis_server()
    cluster = RedisCluster3(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def backend_env(request: pytest.FixtureRequest, isolated_env: dict[str, str]) -> dict[str, str]:
    """The same test on a single Redis and on a 3-master Redis Cluster."""
    if request.param == "redis":
        return isolated_env
    url = request.getfixturevalue("redis_cluster")
    return {**isolated_env, "PATRONAGE_REDIS_URL": url, "PATRONAGE_REDIS_CLUSTER": "true"}


@pytest.fixture
def isolated_env(kafka_up: str, redis_up: str) -> Iterator[dict[str, str]]:
    """Settings for one test: its own topics, consumer group and Redis keys."""
    run = uuid.uuid4().hex[:8]
    env = {
        "PATRONAGE_KAFKA_BOOTSTRAP": kafka_up,
        "PATRONAGE_REDIS_URL": redis_up,
        "PATRONAGE_TOPIC_PREFIX": f"t{run}-",
        "PATRONAGE_GROUP_ID": f"patronage-t{run}",
        "PATRONAGE_KEY_PREFIX": f"t{run}",
        "PATRONAGE_PARTITIONS": "4",
        "PATRONAGE_DATA_DIR": f"/tmp/patronage-test-{run}",
    }
    yield env
    from patronage.streams.kafka_admin import delete_run_topics
    from patronage.streams.settings import settings_with

    # Best effort: a test may have stopped or replaced the broker.
    with contextlib.suppress(Exception):
        asyncio.run(asyncio.wait_for(delete_run_topics(settings_with(env)), 30))
    # ... and its keys on the shared Redis (left behind, they slow every
    # later keyspace scan on a developer's machine).
    with contextlib.suppress(Exception):
        asyncio.run(asyncio.wait_for(_delete_run_keys(redis_up, env["PATRONAGE_KEY_PREFIX"]), 60))
    # ... and the worker's data directory (a suite run left hundreds in /tmp).
    shutil.rmtree(env["PATRONAGE_DATA_DIR"], ignore_errors=True)


async def _delete_run_keys(url: str, prefix: str) -> None:
    from patronage.models.profile import ProfileConfig
    from patronage.streams.store import ProfileStore, make_redis

    client = make_redis(url)
    try:
        await ProfileStore(client, prefix, ProfileConfig()).delete_prefix()
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, which it may stop and start."""
    from tests.integration.private_redis import PrivateRedis

    if shutil.which("redis-server") is None:
        message = "redis-server not installed; run `make services`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
