"""Bad settings stop start-up with the variable's name and the reason."""

from __future__ import annotations

import asyncio

import pytest

from patronage.streams.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PATRONAGE_WEB_PORT", "99999", "less than or equal to 65535"),
        ("PATRONAGE_DEFAULT_ZONE", "Mars/Olympus", "unknown time zone"),
        ("PATRONAGE_CURRENCIES", '{"EURO": 1}', "not an ISO 4217 code"),
        ("PATRONAGE_CURRENCIES", '{"EUR": 0}', "must be > 0"),
        ("PATRONAGE_KAFKA_BOOTSTRAP", "localhost", "not host:port"),
        ("PATRONAGE_REDIS_URL", "http://x", "must start with redis://"),
        ("PATRONAGE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT", "PATRONAGE_KAFKA_SASL_USERNAME"),
        ("PATRONAGE_KEY_PREFIX", "patronage*", "no glob characters"),
        ("PATRONAGE_KEY_PREFIX", "shop:{eu}", "no glob characters"),
        ("PATRONAGE_KEY_PREFIX", "", "no glob characters"),
        ("PATRONAGE_MAX_QUANTITY", "0", "greater than 0"),
        ("PATRONAGE_EARLIEST_EVENT_TIME", "last tuesday", "datetime"),
        ("PATRONAGE_DLQ_PAYLOAD_MAX_BYTES", "2000000", "less than or equal to 131072"),
        ("PATRONAGE_DEDUPE_WINDOW_DAYS", "0", "greater than 0"),
        ("PATRONAGE_BACKGROUND_PASS_SHARE", "0", "greater than 0"),
        ("PATRONAGE_BACKGROUND_PASS_SHARE", "25%", "valid number"),
        ("PATRONAGE_BACKGROUND_PASS_SHARE", "1.5", "less than or equal to 1"),
        ("PATRONAGE_FETCH_WAIT_MS", "-5", "greater than or equal to 0"),
        ("PATRONAGE_FETCH_WAIT_MS", "5ms", "valid integer"),
        ("PATRONAGE_FIT_NICENESS", "20", "less than or equal to 19"),
        ("PATRONAGE_FIT_NICENESS", "-5", "greater than or equal to 0"),
        ("PATRONAGE_PREPARE_PROCESSES", "0", "greater than or equal to 1"),
        ("PATRONAGE_PREPARE_PROCESSES", "two", "valid integer"),
    ],
)
def test_bad_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert message in text
    if "SASL" not in name:
        assert name in text


def test_a_public_web_address_needs_a_token_or_a_deliberate_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATRONAGE_WEB_HOST", "0.0.0.0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "PATRONAGE_WEB_TOKEN" in str(info.value) and "PATRONAGE_WEB_AUTH=none" in str(info.value)
    monkeypatch.setenv("PATRONAGE_WEB_TOKEN", "s3cret-token")
    assert load_settings().web_host == "0.0.0.0"
    monkeypatch.delenv("PATRONAGE_WEB_TOKEN")
    monkeypatch.setenv("PATRONAGE_WEB_AUTH", "none")
    assert load_settings().web_auth == "none"


def test_the_worker_refuses_to_start_open_on_a_public_address() -> None:
    """The real command, as an operator would start it: a clear message, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATRONAGE_WEB_HOST": "0.0.0.0"}
    env.pop("PATRONAGE_WEB_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "patronage.streams.cli", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "PATRONAGE_WEB_TOKEN" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_secret_is_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATRONAGE_REDIS_PASSWORD", "hunter2-secret")
    settings = load_settings()
    assert "hunter2-secret" not in repr(settings)
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "hunter2-secret"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PATRONAGE_KAFKA_SSL_CA_FILE": "/no/such/ca.pem"},
            "PATRONAGE_KAFKA_SSL_CA_FILE",
        ),
        (
            {"PATRONAGE_KAFKA_SSL_CA_FILE": __file__},
            "PATRONAGE_KAFKA_SSL_CA_FILE set but PATRONAGE_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {"PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SSL", "PATRONAGE_KAFKA_SSL_CERT_FILE": __file__},
            "PATRONAGE_KAFKA_SSL_CERT_FILE and PATRONAGE_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "set PATRONAGE_KAFKA_SASL_USERNAME and PATRONAGE_KAFKA_SASL_PASSWORD",
        ),
    ],
)
def test_inconsistent_kafka_tls_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert message in str(info.value)


def test_kafka_tls_context_only_for_tls_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().kafka_ssl_context() is None
    monkeypatch.setenv("PATRONAGE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PATRONAGE_KAFKA_SSL_CHECK_HOSTNAME", "false")
    settings = load_settings()
    context = settings.kafka_ssl_context()
    assert context is not None and context.check_hostname is False
    assert settings.kafka_client_kwargs()["security_protocol"] == "SSL"


@pytest.mark.parametrize(
    ("wait_ms", "max_wait_ms", "min_bytes"),
    [
        # Kafka's default: answered at the first record (aiokafka's defaults).
        ("0", 500, 1),
        # Gathered for up to 5 ms, or until 64 KiB of a backlog are ready.
        ("5", 5, 1 << 16),
        ("250", 250, 1 << 16),
    ],
)
def test_the_fetch_wait_reaches_the_input_consumer(
    monkeypatch: pytest.MonkeyPatch, wait_ms: str, max_wait_ms: int, min_bytes: int
) -> None:
    from patronage.streams.ingest import input_consumer

    monkeypatch.setenv("PATRONAGE_FETCH_WAIT_MS", wait_ms)
    settings = load_settings()

    async def built() -> tuple[int, int]:
        consumer = input_consumer(settings)  # not started: no broker needed
        return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes

    assert asyncio.run(built()) == (max_wait_ms, min_bytes)
