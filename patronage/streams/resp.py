"""Redis connections whose commands hiredis packs, and a pipeline that
reads its replies with hiredis directly.

redis-py's asyncio client packs every command in Python even when hiredis is
installed (the sync client uses hiredis: redis/redis-py#2570; the asyncio
side is redis/redis-py#4176, open). Packing an EVALSHA with a dozen
arguments costs ~10 µs in Python and ~1.4 µs in hiredis, once per command on
the ingest and re-scoring paths. Same bytes on the wire (tests/unit/test_resp.py
compares the two packers); redis-py's packer stays in use for a non-UTF-8
encoding, which hiredis would not honour.

redis-py's pipeline then reads each reply through its own coroutine, timeout
context and response callback: ~20-40 µs of the worker's CPU per command,
paid once per customer per batch on the ingest path and three times per
customer in a re-scoring pass. `execute_pipeline` writes the packed commands
once and takes the replies off the connection's hiredis reader in one loop
(docs/benchmarks.md, "A pipeline that reads its replies in one loop").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError


class HiredisConnection(Connection):
    _packs_for: object = None
    _packs = False

    def pack_command(self, *args: Any) -> list[bytes]:
        if not self._hiredis_packs():
            return super().pack_command(*args)
        # Literal arguments inside the command name ("CONFIG GET") go as
        # separate arguments, as redis-py's own packer sends them.
        head = args[0]
        if isinstance(head, str):
            if " " in head:
                args = tuple(head.encode().split()) + args[1:]
        elif b" " in head:
            args = tuple(head.split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        # A bytearray (hiredis takes bytes only), or what neither packer
        # takes (bool, None, ...): redis-py's error for those.
        args = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:
            raise DataError(str(error)) from error

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(part for args in commands for part in self.pack_command(*args))]

    def _hiredis_packs(self) -> bool:
        """hiredis encodes text as strict UTF-8 only."""
        encoder = self.encoder
        if self._packs_for is not encoder:
            utf8 = encoder.encoding.lower().replace("-", "") == "utf8"
            self._packs = utf8 and encoder.encoding_errors == "strict"
            self._packs_for = encoder
        return self._packs


class HiredisSSLConnection(HiredisConnection, SSLConnection):
    pass


def connection_class_for(url: str) -> type[Connection] | None:
    """The hiredis-packing class for a redis:// or rediss:// URL (None: let
    redis-py choose, e.g. for a unix socket)."""
    if url.startswith("rediss://"):
        return HiredisSSLConnection
    if url.startswith("redis://"):
        return HiredisConnection
    return None


async def execute_pipeline(client: aioredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send `commands` (raw arguments: name first) in one write; their replies
    in order, as Redis sent them (RESP3: a hash is a dict, bytes stay bytes).
    An error reply comes back as redis-py's exception for it, not raised.

    As in redis-py's pipeline, a connection lost mid-way is dropped and, if
    the connection has a Retry of its own, everything is sent again (callers
    send only idempotent batches, as they already must); otherwise redis-py's
    ConnectionError is raised, which the worker's Retry backs off on."""
    if not commands:
        return []
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        parser = getattr(conn, "_parser", None)
        if not isinstance(parser, _AsyncHiredisParser):
            # redis-py picks hiredis's parser whenever hiredis is installed,
            # and it is a dependency: only a client built by hand gets here.
            raise TypeError(f"execute_pipeline needs hiredis's parser, not {type(parser)}")
        payload = conn.pack_commands(commands)

        async def send_and_read() -> list[Any]:
            await conn.send_packed_command(payload)
            return await _replies(conn, parser, len(commands))

        async def drop(error: Exception, failures: int) -> None:
            await conn.disconnect(error=error, failure_count=failures)

        replies: list[Any] = await conn.retry.call_with_retry(
            send_and_read, drop, with_failure_count=True
        )
        return replies
    except BaseException:
        # A reply left unread would be read by the next user of the
        # connection: never hand a half-read connection back.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


async def _replies(conn: AbstractConnection, parser: _AsyncHiredisParser, count: int) -> list[Any]:
    reader: Any = parser._reader  # hiredis.Reader, set once connected
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            while len(replies) < count:
                reply = reader.gets()
                while reply is NOT_ENOUGH_DATA:
                    await parser.read_from_socket()  # type: ignore[no-untyped-call]
                    reply = reader.gets()
                if isinstance(reply, RedisConnectionError):
                    raise reply
                push = parser._hiredis_PushNotificationType
                if push is not None and isinstance(reply, push):
                    await parser.handle_push_response(reply)  # not a reply of ours
                    continue
                replies.append(reply)
    except TimeoutError as error:
        where = f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
        raise RedisTimeoutError(f"Timeout reading from {where}") from error
    return replies
