"""A real 3-master Redis Cluster on 127.0.0.1, started by the tests themselves."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ports(count: int) -> list[int]:
    """Ports whose cluster-bus port (+10000) is free too."""
    found: list[int] = []
    port = 21000
    while len(found) < count and port < 29000:
        if _free(port) and _free(port + 10000):
            found.append(port)
        port += 7
    return found


class RedisCluster3:
    def __init__(
        self, directory: Path, durable: bool = False, acl: tuple[str, str] | None = None
    ) -> None:
        """`durable`: append-only files, so a node stopped and started again
        comes back with its data (and its slots, from nodes.conf).
        `acl`: (user, password) of the only user allowed in."""
        self.dir = directory
        self.durable = durable
        self.acl = acl
        self.ports = _ports(3)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _spawn(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.durable else "no",
                *self._acl_arguments(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: self._cli(port, "ping") == "PONG", "node up")

    def start(self) -> RedisCluster3:
        for port in self.ports:
            self._spawn(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in self.ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
                *self._auth(),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self) -> None:
        for port in self.ports:
            self._wait(
                lambda p=port: "cluster_state:ok" in self._cli(p, "cluster", "info"),
                "cluster state ok",
            )

    def stop_node(self, index: int) -> None:
        """Stop one master (SIGTERM: its append-only file is flushed)."""
        proc = self.procs.pop(self.ports[index])
        proc.terminate()
        proc.wait(10)

    def start_node(self, index: int) -> None:
        self._spawn(self.ports[index])
        self.wait_ok()

    def node_id(self, index: int) -> str:
        return self._cli(self.ports[index], "cluster", "myid")

    def migrate_slot(self, slot: int, source: int, target: int, batch: int = 20) -> int:
        """Move one slot and its keys between masters the way resharding does:
        IMPORTING/MIGRATING, MIGRATE in small batches (clients meanwhile get
        ASK and TRYAGAIN), then SETSLOT NODE everywhere (clients get MOVED).
        Returns how many keys moved."""
        src, dst = self.ports[source], self.ports[target]
        self._cli(dst, "cluster", "setslot", str(slot), "importing", self.node_id(source))
        self._cli(src, "cluster", "setslot", str(slot), "migrating", self.node_id(target))
        moved = 0
        auth = ["AUTH2", *self.acl] if self.acl else []
        while True:
            keys = self._cli(src, "cluster", "getkeysinslot", str(slot), str(batch)).split()
            if not keys:
                break
            self._cli(src, "migrate", "127.0.0.1", str(dst), "", "0", "5000", *auth, "keys", *keys)
            moved += len(keys)
            time.sleep(0.05)  # let clients run into the half-moved slot
        for port in self.ports:
            self._cli(port, "cluster", "setslot", str(slot), "node", self.node_id(target))
        return moved

    def _acl_arguments(self) -> list[str]:
        if self.acl is None:
            return []
        user, password = self.acl
        # The default user stays enabled (with another password): Redis before
        # the fix of redis/redis#14541 replays MULTI/EXEC from the AOF as the
        # default user, and silently drops it when that user is off.
        default = ["default", "on", f">{password}-admin", "~*", "+@all"]
        return ["--user", *default, "--user", user, "on", f">{password}", "~*", "+@all"]

    def _auth(self) -> list[str]:
        if self.acl is None:
            return []
        return ["--user", self.acl[0], "-a", self.acl[1], "--no-auth-warning"]

    def _cli(self, port: int, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), *self._auth(), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip()

    def _wait(self, condition: object, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"redis cluster: timed out waiting for {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs = {}


def require_redis_server() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "redis-server/redis-cli not installed; run `make services`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
