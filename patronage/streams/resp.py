"""Redis connections whose commands hiredis packs.

redis-py's asyncio client packs every command in Python even when hiredis is
installed (the sync client uses hiredis: redis/redis-py#2570; the asyncio
side is redis/redis-py#4176, open). Packing an EVALSHA with a dozen
arguments costs ~10 µs in Python and ~1.4 µs in hiredis, once per command on
the ingest and re-scoring paths. Same bytes on the wire (tests/unit/test_resp.py
compares the two packers); redis-py's packer stays in use for a non-UTF-8
encoding, which hiredis would not honour.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import DataError


class HiredisConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        utf8 = encoder.encoding.lower().replace("-", "") == "utf8"
        if not utf8 or encoder.encoding_errors != "strict":
            return super().pack_command(*args)
        # Literal arguments inside the command name ("CONFIG GET") go as
        # separate arguments, as redis-py's own packer sends them.
        head = args[0]
        if isinstance(head, str):
            args = tuple(head.encode().split()) + args[1:]
        elif b" " in head:
            args = tuple(head.split()) + args[1:]
        args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:  # bool, None, ...: redis-py's error for them
            raise DataError(str(error)) from error


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
