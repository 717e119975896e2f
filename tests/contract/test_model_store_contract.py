"""The model stores' record of re-scoring passes, on the in-memory reference
and on real Redis: profiles are no longer rewritten to record a newer model,
so this record is what every shown `segment_model_version` rests on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from patronage.streams.memory import MemoryModelStore
from patronage.streams.segmenting import ModelStore
from patronage.streams.store import make_redis
from patronage.streams.types import ModelStoreT


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


@pytest.fixture(params=["memory", "redis"])
def models_of(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    if request.param == "memory":
        yield memory_models
    else:
        url = request.getfixturevalue("redis_up")
        yield lambda: redis_models(url)


def test_the_judged_floor_follows_every_partitions_passes(models_of: Any) -> None:
    async def check(models: ModelStoreT) -> list[int]:
        seen = [await models.judged_floor()]
        for partition in range(3):
            await models.record_pass(partition, 4, 4)
        seen.append(await models.judged_floor())  # partition 3 not judged yet
        await models.record_pass(3, 4, 4)
        seen.append(await models.judged_floor())
        await models.record_pass(1, 5, 4)  # a newer pass under way
        seen.append(await models.judged_floor())
        # A worker still on version 3 that took partition 2 over: the record
        # falls back rather than claim more than was judged.
        await models.record_pass(2, 3, 4)
        seen.append(await models.judged_floor())
        return seen

    async def main() -> list[int]:
        async with models_of() as models:
            return await check(models)

    assert asyncio.run(main()) == [0, 0, 4, 4, 3]
