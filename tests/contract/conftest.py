"""Contract tier: one suite over every ProfileStoreT implementation (the
in-memory reference and the Redis store on a real server)."""

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
from patronage.streams.memory import MemoryProfileStore
from patronage.streams.store import ProfileStore, make_redis
from patronage.streams.types import ProfileStoreT

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
async def redis_store(url: str) -> AsyncIterator[ProfileStore]:
    client = make_redis(url)
    store = ProfileStore(client, f"contract{uuid.uuid4().hex[:10]}", CFG)
    try:
        yield store
    finally:
        await store.delete_prefix()
        await client.aclose()


@asynccontextmanager
async def memory_store() -> AsyncIterator[MemoryProfileStore]:
    yield MemoryProfileStore(CFG)


@pytest.fixture(params=["memory", "redis"])
def store_of(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """A factory of fresh stores of one implementation (async context managers)."""
    if request.param == "memory":
        yield memory_store
    else:
        url = request.getfixturevalue("redis_up")
        yield lambda: redis_store(url)


def run(make: Callable[[ProfileStoreT], Coroutine[Any, Any, Any]], store_of: Any) -> Any:
    async def main() -> Any:
        async with store_of() as store:
            return await make(store)

    return asyncio.run(main())
