"""A second, private Apache Kafka broker for tests that restart it or need
SASL or TLS: same jars as `make services` (.services/kafka/libs), own ports
and data."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.integration.certificates import Certificates
from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / ".services" / "kafka" / "libs"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Listener:
    name: str
    protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    mechanism: str | None = None  # PLAIN or SCRAM-SHA-256/512 on SASL_* listeners
    client_auth: bool = False  # SSL: require a client certificate (mutual TLS)


class PrivateKafka:
    """One combined broker/controller. Broker-to-broker traffic has its own
    PLAINTEXT listener so client listeners can use any security setting."""

    def __init__(
        self,
        directory: Path,
        listeners: tuple[Listener, ...] = (Listener("CLIENT"),),
        users: dict[str, str] | None = None,
        certificates: Certificates | None = None,
    ) -> None:
        self.listeners = {listener.name: listener for listener in listeners}
        self.ports = {name: free_port() for name in self.listeners}
        self.internal_port = free_port()
        self.controller_port = free_port()
        self.dir = directory
        self.data = directory / "data"
        self.users = users or {}
        self.certificates = certificates
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "kafka.log"
        self._write_config()

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def bootstrap_for(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        client = [f"{n}://127.0.0.1:{p}" for n, p in self.ports.items()]
        internal = f"INTERNAL://127.0.0.1:{self.internal_port}"
        protocols = [f"{n}:{listener.protocol}" for n, listener in self.listeners.items()]
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            "listeners="
            + ",".join([*client, internal, f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners=" + ",".join([*client, internal]),
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map="
            + ",".join([*protocols, "INTERNAL:PLAINTEXT", "CONTROLLER:PLAINTEXT"]),
            "inter.broker.listener.name=INTERNAL",
            f"log.dirs={self.data}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
        ]
        if self.certificates is not None:
            # Kafka reads PEM directly: key and certificate in one keystore file.
            keystore = self.dir / "server-keystore.pem"
            keystore.write_text(
                self.certificates.server_key.read_text() + self.certificates.server_cert.read_text()
            )
            lines += [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.certificates.ca}",
            ]
        for name, listener in self.listeners.items():
            prefix = f"listener.name.{name.lower()}"
            if listener.client_auth:
                lines.append(f"{prefix}.ssl.client.auth=required")
            if listener.mechanism == "PLAIN":
                users = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
                lines += [
                    f"{prefix}.sasl.enabled.mechanisms=PLAIN",
                    f"{prefix}.plain.sasl.jaas.config="
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
                ]
            elif listener.mechanism is not None:  # SCRAM: users live in the metadata log
                lines += [
                    f"{prefix}.sasl.enabled.mechanisms={listener.mechanism}",
                    f"{prefix}.{listener.mechanism.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
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

    def _scram_credentials(self) -> list[str]:
        """SCRAM users must exist in the metadata before any client logs in."""
        mechanisms = {
            listener.mechanism
            for listener in self.listeners.values()
            if listener.mechanism and listener.mechanism.startswith("SCRAM")
        }
        return [
            argument
            for mechanism in sorted(mechanisms)
            for user, password in self.users.items()
            for argument in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
        ]

    def start(self) -> PrivateKafka:
        if not (self.data / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    uuid.uuid4().hex[:22],
                    "-c",
                    str(self.dir / "server.properties"),
                    "--standalone",
                    *self._scram_credentials(),
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise AssertionError(f"kafka storage format failed:\n{formatted.stderr[-3000:]}")
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
