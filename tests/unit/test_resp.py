"""The hiredis packer sends the bytes redis-py's own packer would."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from patronage.streams.resp import HiredisConnection, HiredisSSLConnection, connection_class_for

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 1, "pt:{c-1}:p", "segment_version", 3, "rfm_r", 2, "segment", 1),
    ("HSET", "pt:{c-1}:p", "basket_sum", 0.1, "monetary_decayed", 1e20, "x", -3.25e-7),
    ("HSET", "k", "big", 2**70, "inf", float("inf"), "neg", -(2**63)),
    ("SET", "pt:{Zoë Müller}:p", "Straße 5, Ça va ☕ 3½ kg"),
    ("SET", b"\x00\xff", bytearray(b"\x01\x02"), memoryview(b"\x03\x04")),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"patronage"),
    ("SET", "empty", ""),
    ("SET", "long", "x" * 10_000),  # above redis-py's buffer cutoff: chunked there
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*args))
    theirs = b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object()])
def test_unencodable_arguments_raise_redis_pys_error(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", bad)


def test_another_encoding_keeps_redis_pys_packer() -> None:
    args = ("SET", "k", "Zoë")
    latin = b"".join(HiredisConnection(encoding="latin-1").pack_command(*args))
    assert latin == b"".join(Connection(encoding="latin-1").pack_command(*args))
    assert "Zoë".encode("latin-1") in latin


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", HiredisConnection),
        ("rediss://127.0.0.1:6380/0", HiredisSSLConnection),
        ("unix:///tmp/redis.sock", None),
    ],
)
def test_connection_class_follows_the_scheme(url: str, expected: type | None) -> None:
    assert connection_class_for(url) is expected
