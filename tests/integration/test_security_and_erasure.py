"""Redis AUTH, erasure and retention against real servers.

A mock would not check what matters here: that the real server refuses the
worker without the password (and the worker says so on /readyz), that the
secret never reaches the logs, and that erasure removes every real key.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from tests.integration.certificates import make_certificates
from tests.integration.harness import (
    Worker,
    cli_lag,
    drained,
    erase_by_cli,
    free_port,
    redis_client,
    settings_for,
    settings_with_topics,
    wait_for,
)
from tests.integration.private_redis import PrivateRedis
from tests.integration.test_end_to_end import as_messages, export, publish_with_metadata

SECRET = "s3cret-patronage-pw"
TOKEN = "web-t0ken-for-tests"


@pytest.mark.parametrize("auth", ["requirepass", "acl user"])
def test_redis_auth_and_web_token(isolated_env: dict[str, str], tmp_path: Path, auth: str) -> None:
    """The ACL user may only touch keys under the worker's key prefix and no
    @dangerous command: the worker must need nothing more."""
    acl_user = "patronage-worker" if auth == "acl user" else None
    prefix = isolated_env["PATRONAGE_KEY_PREFIX"]
    server = PrivateRedis(tmp_path, password=SECRET, acl_user=acl_user, acl_keys=f"{prefix}:*")
    server.start()
    base = {
        **isolated_env,
        "PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
        "PATRONAGE_LOG_LEVEL": "debug",
    }
    try:
        settings = settings_with_topics(base)
        now = int(time.time() * 1000)
        events, _ = generate(customers=40, days=20, seed=2, start_ms=(now // DAY_MS - 21) * DAY_MS)
        publish_with_metadata(settings, as_messages(events))

        # Without the password the server refuses us, and /readyz says so.
        refused = Worker(base, name="noauth").start()
        try:
            wait_for(lambda: refused.http("/readyz")[0] == 503, 15, "/readyz 503 without AUTH")
            reason = json.loads(refused.http("/readyz")[1])["checks"]["redis"]
            assert "auth" in reason.lower(), reason
        finally:
            refused.stop()

        env = {**base, "PATRONAGE_REDIS_PASSWORD": SECRET, "PATRONAGE_WEB_TOKEN": TOKEN}
        if acl_user:
            env["PATRONAGE_REDIS_USERNAME"] = acl_user
        worker = Worker(env, name="auth").start()
        try:
            wait_for(lambda: drained(settings), 60, "drain with AUTH", worker.check_alive)
            wait_for(lambda: worker.http("/readyz")[0] == 200, 20, "ready with AUTH")
            # The web token guards data endpoints; probes stay open.
            assert worker.http("/metrics")[0] == 401
            assert worker.http("/metrics", token="wrong")[0] == 401
            assert worker.http("/metrics", token=TOKEN)[0] == 200
            assert worker.http("/healthz")[0] == 200
            customer = events[0]["customer_id"]
            client = redis.Redis(port=server.port, username=acl_user, password=SECRET)
            assert client.exists(f"{settings.key_prefix}:{{{customer}}}:p")
            assert worker.http("/readyz")[0] == 200
            assert "NOPERM" not in worker.log_path.read_text(errors="replace")
            if acl_user:  # the restriction is real
                with pytest.raises(redis.exceptions.NoPermissionError):
                    client.set("elsewhere", 1)
            assert worker.http(f"/profiles/{customer}")[0] == 401
            assert worker.http(f"/profiles/{customer}", token=TOKEN)[0] == 200
        finally:
            worker.stop()
        log = worker.log_path.read_text(errors="replace") + refused.log_path.read_text(
            errors="replace"
        )
        assert SECRET not in log and TOKEN not in log
        # Debug level names customers (for troubleshooting); see the erasure
        # test for info level, which must not.
        assert customer in worker.log_path.read_text(errors="replace")
    finally:
        server.stop()


def test_erasure_and_retention(backend_env: dict[str, str]) -> None:
    """Every key of an erased customer is gone, on one Redis and on a cluster
    (where the customer's keys and the lapse due set live on different masters)
    — and so is their feature vector in the segment learner's checkpoint,
    which a key scan of the customer's hash tag does not see."""
    env = {
        **backend_env,
        "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
        "PATRONAGE_LOG_LEVEL": "info",
        # A model early, so the learner has a stored checkpoint to clean.
        "PATRONAGE_SEGMENT_WARMUP": "10",
        "PATRONAGE_SEGMENT_WARMUP_DAYS": "0",
    }
    settings = settings_with_topics(env)
    now = int(time.time() * 1000)
    events, _ = generate(customers=40, days=30, seed=2, start_ms=(now // DAY_MS - 31) * DAY_MS)
    publish_with_metadata(settings, as_messages(events))
    client = redis_client(env)
    prefix = settings.key_prefix
    visit_days: dict[str, set[int]] = {}
    for e in events:
        if e["type"] != "customer_attributes":
            visit_days.setdefault(e["customer_id"], set()).add(e["ts"] // DAY_MS)
    worker = Worker(env, name="erasure").start()
    try:
        wait_for(lambda: drained(settings), 60, "drain", worker.check_alive)
        # The victim is a regular whose lapse judgement is pending (the 90-day
        # tenure is not reached), so it has a due entry to be erased too.
        # Chosen from the store: which customers reach the minimum visit days
        # depends on the simulated history, not on this test.
        due = list(client.scan_iter(match=f"{prefix}:{{lapse-*}}:due"))
        scheduled = {_text(m) for k in due for m in client.zrange(k, 0, -1)}
        assert scheduled, "no customer has a lapse due time"
        victim = max(scheduled, key=lambda c: (len(visit_days.get(c, ())), c))
        assert client.exists(f"{prefix}:{{{victim}}}:p")
        checkpoint = f"{prefix}:{{model}}:trainer"
        sampled = lambda: f'"{victim}"' in _text(client.get(checkpoint) or b"")  # noqa: E731
        wait_for(sampled, 30, "the learner's checkpoint to hold the victim", worker.check_alive)

        confirmation = erase_by_cli(env, victim)
        assert confirmation["customer_id"] == victim and confirmation["keys_removed"] >= 1
        assert list(client.scan_iter(match=f"{prefix}:{{{victim}}}:*")) == []
        assert all(client.zscore(k, victim) is None for k in due)
        assert worker.http(f"/profiles/{victim}")[0] == 404
        other = next(c for c in sorted(visit_days) if c != victim)
        assert other != victim and worker.http(f"/profiles/{other}")[0] == 200
        wait_for(lambda: not sampled(), 15, "the checkpoint to drop the victim")
    finally:
        worker.stop()
    # At the default (info) level the log never names a customer.
    log = worker.log_path.read_text(errors="replace")
    assert not {e["customer_id"] for e in events if e["customer_id"] in log}

    # Retention: profiles not updated for the retention time disappear.
    short = {
        **env,
        "PATRONAGE_RETENTION_DAYS": str(2 / 86_400),
        "PATRONAGE_GROUP_ID": env["PATRONAGE_GROUP_ID"] + "-r",
        "PATRONAGE_KEY_PREFIX": prefix + "r",
    }
    retained = Worker(short, name="retention").start()
    try:
        short_settings = settings_for(short)
        wait_for(lambda: drained(short_settings), 60, "drain (retention)", retained.check_alive)
        keys_now = list(client.scan_iter(match=f"{prefix}r:{{*}}:p"))
        assert keys_now, "profiles were written"
        # -2: expired between the scan and the look (the TTL is 2 s), 0: in
        # its last millisecond; -1 would be a profile written without its TTL.
        ttls = [client.pttl(k) for k in keys_now]
        assert all(t == -2 or 0 <= t <= 2000 for t in ttls), sorted(ttls)[:5]
        wait_for(
            lambda: not list(client.scan_iter(match=f"{prefix}r:{{*}}:p")),
            10,
            "inactive profiles to expire",
        )
    finally:
        retained.stop()
        # The fixture deletes the keys under the test's own prefix; this run's
        # partition sets, model and marks are under another (each suite run
        # left 23 keys on the shared Redis).
        for key in client.scan_iter(match=f"{prefix}r:*", count=1000):
            client.unlink(key)


def test_redis_over_tls(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """The worker talks to a TLS-only redis-server, verifying it against a CA."""
    certificates = make_certificates(tmp_path)
    ca, cert, key = certificates.ca, certificates.server_cert, certificates.server_key
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        wait_for(
            lambda: (
                subprocess.run(
                    ["redis-cli", "--tls", "--cacert", str(ca), "-p", str(port), "ping"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                == "PONG"
            ),
            15,
            "TLS redis",
        )
        env = {
            **isolated_env,
            "PATRONAGE_REDIS_URL": url,
            "PATRONAGE_REDIS_TLS_CA_FILE": str(ca),
            "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
        }
        settings = settings_with_topics(env)
        now = int(time.time() * 1000)
        events, _ = generate(customers=30, days=20, seed=3, start_ms=(now // DAY_MS - 21) * DAY_MS)
        publish_with_metadata(
            settings,
            as_messages(events),
        )
        # Without the CA the server's certificate cannot be verified: not ready.
        untrusted = Worker(
            {k: v for k, v in env.items() if k != "PATRONAGE_REDIS_TLS_CA_FILE"},
            name="tls-untrusted",
        ).start()
        try:
            wait_for(lambda: untrusted.http("/readyz")[0] == 503, 15, "/readyz 503 without the CA")
            assert (
                "certificate" in json.loads(untrusted.http("/readyz")[1])["checks"]["redis"].lower()
            )
        finally:
            untrusted.stop()
        worker = Worker(env, name="tls").start()
        try:
            wait_for(lambda: drained(settings), 60, "drain over TLS", worker.check_alive)
        finally:
            worker.stop()
        profiles = export(env, tmp_path / "tls.jsonl")
        assert sum(p["events_applied"] for p in profiles.values()) == len(events)
    finally:
        server.terminate()
        server.wait(10)


def test_unrecoverable_redis_error_stops_the_worker(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """Redis refusing our keys for good (an ACL without the key prefix) is
    not an outage to wait out. Before the fix the ingest agent died and the
    worker stayed up consuming nothing; now it exits, so its supervisor shows
    a crash loop, and it commits nothing it did not apply."""
    acl_user = "patronage-worker"
    server = PrivateRedis(tmp_path, password=SECRET, acl_user=acl_user, acl_keys="elsewhere:*")
    server.start()
    env = {
        **isolated_env,
        "PATRONAGE_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "PATRONAGE_REDIS_USERNAME": acl_user,
        "PATRONAGE_REDIS_PASSWORD": SECRET,
        "PATRONAGE_COMMIT_INTERVAL_S": "0.3",
    }
    worker = Worker(env, name="noperm")
    try:
        settings = settings_with_topics(env)
        now = int(time.time() * 1000)
        events, _ = generate(customers=20, days=10, seed=8, start_ms=(now // DAY_MS - 11) * DAY_MS)
        published = publish_with_metadata(settings, as_messages(events))
        with contextlib.suppress(AssertionError):
            worker.start()  # it may exit before its web port answers
        assert worker.proc is not None
        wait_for(lambda: worker.proc is not None and worker.proc.poll() is not None, 60, "exit")
        exit_code = worker.proc.returncode
    finally:
        worker.stop()
        server.stop()
    log = worker.log_path.read_text(errors="replace")
    assert exit_code == 70, log[-2000:]
    assert "no permissions" in log and "stopping the worker" in log
    assert cli_lag(env)[0] == len(published)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
