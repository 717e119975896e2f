"""A private redis-server (own port, own directory) for tests that stop and
start it or need a password; the shared Redis of `make services` is never touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.harness import free_port, wait_for


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
