"""A private redis-server (own port, own directory) for tests that stop and
start it or need a password; the shared Redis of `make services` is never touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.harness import free_port, wait_for


class PrivateRedis:
    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        acl_user: str | None = None,
        acl_keys: str = "*",
    ) -> None:
        """With `acl_user`, the default user is off and only that ACL user
        (with `password`) may log in, to keys matching `acl_keys` only."""
        self.port = free_port()
        self.dir = directory
        self.password = password
        self.acl_user = acl_user
        self.acl_keys = acl_keys
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
                *self._auth_arguments(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "private redis")

    def _auth_arguments(self) -> list[str]:
        if self.acl_user:
            assert self.password
            rules = [self.acl_user, "on", f">{self.password}", f"~{self.acl_keys}"]
            # Default user kept, with another password: see redis_cluster.py.
            default = ["default", "on", f">{self.password}-admin", "~*", "+@all"]
            return ["--user", *default, "--user", *rules, "+@all", "-@dangerous"]
        return ["--requirepass", self.password] if self.password else []

    def _answers(self) -> bool:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.acl_user:
            auth = ["--user", self.acl_user, *auth]
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
