"""A second, private Apache Kafka broker for tests that restart it or need
SASL: same jars as `make services` (.services/kafka/libs), own ports and data."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / ".services" / "kafka" / "libs"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PrivateKafka:
    def __init__(self, directory: Path, sasl_users: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.dir = directory
        self.data = directory / "data"
        self.sasl_users = sasl_users
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "kafka.log"
        self._write_config()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        protocol = "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=CLIENT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,CLIENT:{protocol}",
            "inter.broker.listener.name=CLIENT",
            f"log.dirs={self.data}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
        ]
        if self.sasl_users:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            admin, password = next(iter(self.sasl_users.items()))
            lines += [
                "sasl.enabled.mechanisms=PLAIN",
                "sasl.mechanism.inter.broker.protocol=PLAIN",
                "listener.name.client.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{admin}" password="{password}" {users};',
            ]
        (self.dir / "server.properties").write_text("\n".join(lines) + "\n")
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
            "appender.stdout.type = Console\nappender.stdout.name = STDOUT\n"
            "appender.stdout.layout.type = PatternLayout\n"
            "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        )

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            f"{LIBS}/*",
            *args,
        ]

    def start(self) -> PrivateKafka:
        if not (self.data / "meta.properties").exists():
            subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    uuid.uuid4().hex[:22],
                    "-c",
                    str(self.dir / "server.properties"),
                    "--standalone",
                ),
                check=True,
                capture_output=True,
            )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.dir / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"private kafka did not start:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
