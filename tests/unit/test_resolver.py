"""The Resolver's cache of people under concurrent calls.

The ingest batch, the sweeps' alerts and the link agent ask the same
Resolver at once; one call's wait for the store lets the others clear the
cache (a person changed) or trim it. `make demo` stopped its worker with a
KeyError from exactly that: a key cached when a call started was gone when
it read the cache back after its wait.
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

    async def persons_of(self, nodes: Sequence[str]) -> dict[str, Person]:
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
