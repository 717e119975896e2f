"""The worker keeps the collector off what it need not walk: what start-up
built goes to the permanent generation (full collections walked it all,
70-85 ms each, with an input batch waiting — the 1k events/s p99 while
models were promoted), and automatic collection is off while a batch is in
hand."""

from __future__ import annotations

import asyncio
import gc

import pytest

from patronage.streams.collector import collector_held
from patronage.streams.worker import freeze_startup_objects


def test_objects_alive_at_startup_leave_the_collectors_generations() -> None:
    built_at_startup = {"services": [object() for _ in range(3)]}
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        walked = gc.get_objects()
        assert not any(o is built_at_startup for o in walked)
        made_later: dict[str, list[int]] = {"batch": []}
        assert any(o is made_later for o in gc.get_objects())
    finally:
        gc.unfreeze()


# -- the collector held off while a batch is in hand (streams/ingest.py) -----
# Young collections during a 20,000-record batch promoted it to the old
# generation, and full collections then walked it: 3.5 s of a 24 s drain.


def test_collector_is_off_during_a_batch_and_back_after() -> None:
    async def batch() -> list[bool]:
        seen = []
        with collector_held():
            seen.append(gc.isenabled())
            await asyncio.sleep(0)  # other tasks run with it off too
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())
        return seen

    assert gc.isenabled()
    assert asyncio.run(batch()) == [False, False, True]
    assert gc.isenabled()


def test_collector_is_back_after_a_batch_that_fails() -> None:
    async def failing() -> None:
        with collector_held():
            raise RuntimeError("Redis gave up")

    with pytest.raises(RuntimeError):
        asyncio.run(failing())
    assert gc.isenabled()


def test_a_stalled_batch_gets_the_collector_back_after_the_longest_hold() -> None:
    async def stalled() -> tuple[bool, bool]:
        with collector_held(longest_s=0.05):
            at_start = gc.isenabled()
            await asyncio.sleep(0.2)  # a batch retrying Redis
            during_stall = gc.isenabled()
        return at_start, during_stall

    assert asyncio.run(stalled()) == (False, True)
    assert gc.isenabled()


def test_a_collector_someone_else_turned_off_stays_off() -> None:
    async def batch() -> None:
        with collector_held(longest_s=0.01):
            await asyncio.sleep(0.05)

    gc.disable()
    try:
        asyncio.run(batch())
        assert not gc.isenabled()
    finally:
        gc.enable()
