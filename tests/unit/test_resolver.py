"""The Resolver's cache of people under concurrent calls.

The ingest batch, the sweeps' alerts and the link agent ask the same
Resolver at once; one call's wait for the store lets the others clear the
cache (a person changed) or trim it. `make demo` stopped its worker with a
KeyError from exactly that: a key cached when a call started was gone when
it read the cache back after its wait.

A batch asks for the generation and the uncached people in one round trip;
the cached answers are read again when the generation moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from patronage.models.identity import Person
from patronage.models.profile import ProfileConfig
from patronage.streams.identities import Resolver
from patronage.streams.memory import MemoryProfileStore

ANNA = Person("anna", ("anna", "loyalty_card:1"))
CLEO = Person("cleo", ("cleo", "cookie:9"))


class HeldStore(MemoryProfileStore):
    """Holds the next `persons_of` until the test releases it."""

    def __init__(self) -> None:
        super().__init__(ProfileConfig())
        self.hold_next = False
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.read: list[str] = []  # nodes read from the store

    async def persons_of(self, nodes: Sequence[str]) -> dict[str, Person]:
        self.read.extend(nodes)
        if self.hold_next:
            self.hold_next = False
            self.waiting.set()
            await self.release.wait()
        return await super().persons_of(nodes)


def held_call(meanwhile_generation: int, cache_size: int) -> tuple[dict[str, Person], set[str]]:
    """persons(anna, cleo) with anna cached and cleo fetched; while the fetch
    waits, the generation becomes `meanwhile_generation` and another call
    asks for someone else. Returns the held call's answer and the cache."""

    async def run() -> tuple[dict[str, Person], set[str]]:
        store = HeldStore()
        store.persons = {"anna": ANNA, "loyalty_card:1": ANNA, "cleo": CLEO}
        store.generation = 1
        resolver = Resolver(store, ProfileConfig(), cache_size)
        assert await resolver.persons(["anna"]) == {"anna": ANNA}
        store.hold_next = True
        held = asyncio.create_task(resolver.persons(["anna", "cleo", "ben"]))
        await store.waiting.wait()
        store.generation = meanwhile_generation
        assert await resolver.persons(["ben", "dora"]) == {}
        store.release.set()
        return await held, set(resolver._cache)

    return asyncio.run(run())


def test_a_call_survives_the_cache_being_cleared_while_it_waits() -> None:
    answer, cached = held_call(meanwhile_generation=2, cache_size=100)
    assert answer == {"anna": ANNA, "cleo": CLEO}
    # Its answers were read under the older generation: not cached for the new one.
    assert cached == {"ben", "dora"}


def test_a_call_survives_the_cache_being_trimmed_while_it_waits() -> None:
    answer, cached = held_call(meanwhile_generation=1, cache_size=2)
    assert answer == {"anna": ANNA, "cleo": CLEO}
    assert len(cached) == 2


def test_a_cached_answer_is_read_again_once_the_generation_moved() -> None:
    """anna cached as linked; then unlinked elsewhere (a new generation):
    the next batch that asks for anna and someone new must not keep the
    cached person."""

    async def run() -> tuple[dict[str, Person], dict[str, Person]]:
        store = HeldStore()
        store.persons = {"anna": ANNA, "loyalty_card:1": ANNA}
        store.generation = 1
        resolver = Resolver(store, ProfileConfig(), 100)
        before = await resolver.persons(["anna"])
        store.persons = {}
        store.generation = 2
        return before, await resolver.persons(["anna", "cleo"])

    before, after = asyncio.run(run())
    assert before == {"anna": ANNA}
    assert after == {}


def test_a_store_that_started_again_is_cached_again() -> None:
    """An emptied store starts its generation again from 0: the cache
    follows it (a later call's answer is adopted whatever its generation)."""

    async def run() -> tuple[dict[str, Person], set[str], list[str]]:
        store = HeldStore()
        store.persons = {"anna": ANNA}
        store.generation = 7
        resolver = Resolver(store, ProfileConfig(), 100)
        await resolver.persons(["anna"])
        store.persons, store.generation = {"cleo": CLEO}, 0
        answer = await resolver.persons(["anna", "cleo"])
        store.read.clear()
        assert await resolver.persons(["anna", "cleo"]) == answer
        return answer, set(resolver._cache), store.read

    answer, cached, read_again = asyncio.run(run())
    assert answer == {"cleo": CLEO}
    assert cached == {"anna", "cleo"}
    assert read_again == []  # answered from the cache
