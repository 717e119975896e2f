"""Contract tier: one suite over every ProfileStoreT and ModelStoreT
implementation (the in-memory references and the Redis stores on a real
server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from patronage.models.lapse import LapseRules
from patronage.models.profile import ProfileConfig
from patronage.models.timeunits import DAY_MS
from patronage.streams.memory import MemoryModelStore, MemoryProfileStore
from patronage.streams.segmenting import ModelStore
from patronage.streams.store import ProfileStore, make_redis

# Small windows and lapse rules, so short histories reach every branch.
CFG = ProfileConfig(
    map_cap=3,
    session_window=4,
    dedupe_window_ms=2 * DAY_MS,
    dedupe_max_events=12,
    late_kept=3,
    lapse=LapseRules(min_visits=3, min_tenure_days=10, min_gap_days=3, gap_multiplier=2.0),
    record_orders=True,
)

StoreFactory = Callable[[], Any]


@asynccontextmanager
async def redis_store(url: str, functions: bool = True) -> AsyncIterator[ProfileStore]:
    """The Redis store; `functions=False`: applying with EVALSHA, as on a
    Redis before 7 (the same apply code run as a script, not a function)."""
    client = make_redis(url)
    store = ProfileStore(client, f"contract{uuid.uuid4().hex[:10]}", CFG, functions=functions)
    try:
        yield store
    finally:
        await store.delete_prefix()
        await client.aclose()


@asynccontextmanager
async def memory_store() -> AsyncIterator[MemoryProfileStore]:
    yield MemoryProfileStore(CFG)


@asynccontextmanager
async def redis_models(url: str) -> AsyncIterator[ModelStore]:
    client = make_redis(url)
    prefix = f"contract{uuid.uuid4().hex[:10]}"
    try:
        yield ModelStore(client, prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def memory_models() -> AsyncIterator[MemoryModelStore]:
    yield MemoryModelStore()


def _factory(
    request: pytest.FixtureRequest, memory: Callable[[], Any], redis: Callable[..., Any]
) -> Callable[[], Any]:
    """Fresh instances (async context managers) of the implementation the
    fixture's parameter names."""
    if request.param == "memory":
        return memory
    url = request.getfixturevalue("redis_up")
    if request.param == "redis-script":
        return lambda: redis(url, functions=False)
    return lambda: redis(url)


@pytest.fixture(params=["memory", "redis", "redis-script"])
def store_of(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """A factory of fresh profile stores of one implementation."""
    yield _factory(request, memory_store, redis_store)


@pytest.fixture(params=["memory", "redis"])
def models_of(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """A factory of fresh model stores of one implementation."""
    yield _factory(request, memory_models, redis_models)


def run(make: Callable[[Any], Coroutine[Any, Any, Any]], store_of: Any) -> Any:
    async def main() -> Any:
        async with store_of() as store:
            return await make(store)

    return asyncio.run(main())
