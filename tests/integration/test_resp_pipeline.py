"""The pipeline that reads its replies with hiredis (streams/resp.py), on a
real redis-server.

A mock would not have caught what these guard: the replies are RESP3 as the
server sends them (maps, doubles, nils, an error reply in the middle of a
pipeline), a server that forgot a script answers NOSCRIPT, a connection the
server drops fails in a way the worker retries and is replaced, and a read
that is abandoned half-way must never hand its late reply to the next caller.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from patronage.models.profile import DAY_MS, Delta, ProfileConfig, short_hash, token
from patronage.streams.errors import classify
from patronage.streams.resp import HiredisConnection, execute_pipeline
from patronage.streams.store import ProfileStore, group_by_customer, make_redis

# Busy for 1 s inside Redis, then answers: a reply that arrives late. (At
# 0.3 s a loaded two-core machine once stalled the test's event loop past
# the reply, so the 0.05 s timeout never fired.)
SLOW_SCRIPT = """
local t0 = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1000000
return 'slow'
"""


def one_connection(url: str) -> aioredis.Redis:
    """A client whose pool holds a single connection, so every call reuses
    the connection the call before it left behind."""
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    pool = aioredis.ConnectionPool(
        connection_class=HiredisConnection, host=host, port=int(port), max_connections=1
    )
    return aioredis.Redis(connection_pool=pool)


def run(test: Callable[[aioredis.Redis], Awaitable[None]], url: str) -> None:
    async def main() -> None:
        client = one_connection(url)
        try:
            await test(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_replies_come_back_in_order_with_errors_in_place(redis_up: str) -> None:
    run(_replies_in_order, redis_up)


async def _replies_in_order(client: aioredis.Redis) -> None:
    k = f"resp{uuid.uuid4().hex[:8]}"
    table: list[tuple[tuple[Any, ...], Any]] = [
        (("SET", f"{k}:s", "Straße 5 ☕"), b"OK"),
        (("HSET", f"{k}:h", "basket_sum", 12.5, "orders", 3), 2),
        (("HGETALL", f"{k}:h"), {b"basket_sum": b"12.5", b"orders": b"3"}),
        (("HGETALL", f"{k}:missing"), {}),
        (("GET", f"{k}:missing"), None),
        (("ZADD", f"{k}:z", 5, "c-1", 7, "c-2"), 2),
        (("ZADD", f"{k}:z", "LT", 9, "c-1", 1, "c-2"), 0),  # LT: only c-2 moves
        (("ZRANGE", f"{k}:z", 0, -1, "WITHSCORES"), [[b"c-2", 1.0], [b"c-1", 5.0]]),
        (("HGET", f"{k}:s", "x"), ResponseError),  # WRONGTYPE: a reply, not raised
        (("EVALSHA", "0" * 40, 0), NoScriptError),
        (("GET", f"{k}:s"), "Straße 5 ☕".encode()),
        (("DEL", f"{k}:s", f"{k}:h", f"{k}:z"), 3),
    ]
    replies = await execute_pipeline(client, [command for command, _ in table])
    assert len(replies) == len(table)
    for (command, expected), reply in zip(table, replies, strict=True):
        if isinstance(expected, type):
            assert isinstance(reply, expected), (command, reply)
        else:
            assert reply == expected, (command, reply)


def test_a_connection_the_server_drops_fails_as_transient_then_reconnects(redis_up: str) -> None:
    """The store's clients have no retry of their own (the worker's Retry
    backs off and sends the batch again): the call on the dropped connection
    raises the error the policy calls transient, and the next one gets a
    fresh connection.

    The connection is dropped while a call waits on it (a BLPOP the server
    holds): dropped between two calls instead, whether redis-py's check at
    checkout sees the close first (and quietly reconnects) is a race — CI
    lost it once."""
    asyncio.run(_reconnected(redis_up))


async def _reconnected(url: str) -> None:
    client = make_redis(url)
    killer = make_redis(url)
    key = f"resp{uuid.uuid4().hex[:8]}"
    try:
        (connection_id,) = await execute_pipeline(client, [("CLIENT", "ID")])
        waiting = asyncio.create_task(execute_pipeline(client, [("BLPOP", f"{key}:never", 8)]))
        await _until_blocked(killer, connection_id)
        assert await killer.client_kill_filter(_id=connection_id) == 1
        with pytest.raises(RedisConnectionError) as dropped:
            await waiting
        assert classify(dropped.value) == "transient"
        replies = await execute_pipeline(client, [("CLIENT", "ID"), ("INCR", key), ("DEL", key)])
        assert replies[0] != connection_id and replies[1:] == [1, 1]
    finally:
        await killer.aclose()
        await client.aclose()


async def _until_blocked(observer: aioredis.Redis, connection_id: int) -> None:
    """Wait (at most 5 s) until the server holds `connection_id` in a blocking call."""
    async with asyncio.timeout(5):
        while True:
            (listing,) = await execute_pipeline(observer, [("CLIENT", "LIST", "ID", connection_id)])
            if b"cmd=blpop" in listing and b"flags=b" in listing:
                return
            await asyncio.sleep(0.01)


def test_an_abandoned_read_never_hands_its_reply_to_the_next_call(redis_up: str) -> None:
    run(_abandoned_read, redis_up)


async def _abandoned_read(client: aioredis.Redis) -> None:
    key = f"resp{uuid.uuid4().hex[:8]}"
    await client.set(key, "mine")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(execute_pipeline(client, [("EVAL", SLOW_SCRIPT, 0)]), 0.05)
    # Same (only) pool slot; were the connection handed back as it was, this
    # read would take the script's late 'slow' as the answer to GET.
    assert await execute_pipeline(client, [("GET", key), ("DEL", key)]) == [b"mine", 1]


def test_the_store_loads_its_scripts_again_after_redis_forgot_them(redis_up: str) -> None:
    """SCRIPT FLUSH (or a restarted server) makes every EVALSHA answer
    NOSCRIPT, FUNCTION FLUSH every FCALL of the apply function "Function not
    found": the store loads its scripts and the function and sends those
    commands again. (Read as a poison reply, the second would have sent the
    batch's records to the dead-letter topic.)"""
    asyncio.run(_scripts_loaded_again(redis_up))


def click_at(offset: int) -> Delta:
    t0 = 1_767_225_600_000
    return Delta(
        kind="click",
        source="clicks:0",
        offset=offset,
        event_token=token(f"click-{offset}"),
        ts=t0 + offset * DAY_MS,
        day=(t0 + offset * DAY_MS) // DAY_MS,
        session_token=short_hash(f"s{offset}"),
    )


async def _scripts_loaded_again(url: str) -> None:
    client = make_redis(url)
    store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", ProfileConfig())
    try:
        first = await store.apply_batch(group_by_customer([("c-1", click_at(0))]), {"c-1": 0})
        assert first.applied == 1
        assert store.functions  # Redis 7: the apply code runs as a function
        await client.script_flush()
        again = await store.apply_batch(group_by_customer([("c-1", click_at(1))]), {"c-1": 0})
        assert (again.applied, again.failed) == (1, {})
        await client.function_flush()
        third = await store.apply_batch(group_by_customer([("c-1", click_at(2))]), {"c-1": 0})
        assert (third.applied, third.failed) == (1, {})
        view = await store.profile("c-1")
        assert view is not None and view["clicks"] == 3
    finally:
        await store.delete_prefix()
        await client.aclose()


def test_a_redis_user_without_functions_applies_with_scripts(redis_up: str) -> None:
    """An ACL that allows EVALSHA but not FUNCTION (or a Redis before 7,
    which has no FUNCTION): the store says so once and applies with the
    script, same results."""
    asyncio.run(_without_functions(redis_up))


async def _without_functions(url: str) -> None:
    admin = make_redis(url)
    user, password = f"nofn{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    prefix = f"test{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all", "-function"],
    )
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    client = make_redis(f"redis://{user}:{password}@{host_port}/0")
    store = ProfileStore(client, prefix, ProfileConfig())
    try:
        result = await store.apply_batch(group_by_customer([("c-1", click_at(0))]), {"c-1": 0})
        assert (result.applied, result.failed) == (1, {})
        assert not store.functions
        view = await store.profile("c-1")
        assert view is not None and view["clicks"] == 1
    finally:
        await store.delete_prefix()
        await client.aclose()
        await admin.acl_deluser(user)
        await admin.aclose()
