"""Identity stitching in the worker (models/identity.py is the logic).

`Stitcher` applies links and unlinks from the `identities` topic: it reads
the graph around the pair from the store, applies the event to it, sends one
`identity-changes` message per person whose members changed (acked first),
then records the pair and the people. The topic has one partition, so one
worker applies links in their order; a crash re-runs the event in hand
against the same stored graph and re-sends the same ids.

`Resolver` is the batch path's view of people: which applied profiles are
parts of a linked person (a bounded cache, emptied whenever any person
changes), and a person's canonical profile, the merge of its parts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from patronage.models.batch import PreparedBatch, Record, bounded_payload, dead_letter
from patronage.models.contracts import (
    DeadLetter,
    IdentityChange,
    IdentityEvent,
    format_ts,
    parse_ts,
)
from patronage.models.identity import (
    IdentityGraph,
    Limits,
    LinkEvent,
    Person,
    PersonChange,
    link_from_json,
    link_to_json,
    merge_all,
    node_key,
    person_changes,
    persons,
)
from patronage.models.layout import SCORED_FIELDS
from patronage.models.profile import ProfileConfig, ProfileState
from patronage.streams.memory import stored_fields
from patronage.streams.settings import Settings
from patronage.streams.types import Fields, PersonActivity, ProfileStoreT

log = logging.getLogger("patronage.identity")

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]
DeadLetters = Callable[[PreparedBatch], Awaitable[None]]
# Scores the people a link changed, at the link's time.
Score = Callable[[list[PersonChange], int], Awaitable[None]]


class Stitcher:
    def __init__(
        self,
        settings: Settings,
        store: ProfileStoreT,
        send: Send,
        dead_letters: DeadLetters,
        score: Score,
    ) -> None:
        self.settings = settings
        self.score = score
        self.store = store
        self.send = send
        self.dead_letters = dead_letters
        self.limits = Limits(
            settings.identity_max_identifiers_per_customer,
            settings.identity_max_customers_per_identifier,
        )
        self.changes = 0
        self.refused = 0

    async def apply(self, record: Record, now_ms: int) -> list[PersonChange]:
        """One record of `identities`; returns the people it changed."""
        link = await self._parse(record, now_ms)
        if link is None:
            return []
        pair = (link.customer_id, node_key(link.identifier))
        graph, nodes = await self._component(pair)
        if graph is None:
            why = (
                f"more than {self.settings.identity_max_component} customers and identifiers "
                "are linked around this pair (PATRONAGE_IDENTITY_MAX_COMPONENT)"
            )
            await self._refuse(record, "identity_component_too_large", why, now_ms)
            return []
        before = persons(graph.people())
        refused_before = graph.in_force()[1]
        if not graph.apply(link):
            return []  # redelivered, or older than what the pair holds
        after = persons(graph.people())
        refused = graph.in_force()[1]
        if link.event_id in refused:
            await self._refuse(record, "identity_limit", refused[link.event_id], now_ms)
        displaced = {
            e: why for e, why in refused.items() if e not in refused_before and e != link.event_id
        }
        if displaced:
            await self._displaced(graph, displaced, link, record, now_ms)
        keys = {*nodes, *pair}
        changes = person_changes(before, after, keys)
        if changes:
            await self._announce(changes, link)
            await self.score(changes, link.ts)
        moved = {k: after.get(k) for k in keys if after.get(k) != before.get(k)}
        # The pair is written last: a crash before it re-runs this event
        # (same messages, same scores).
        await self.store.write_identities({pair: link_to_json(link)}, moved)
        return changes

    async def _parse(self, record: Record, now_ms: int) -> LinkEvent | None:
        rules = self.settings.rules
        try:
            event = IdentityEvent.model_validate_json(record.value or b"")
            ts = parse_ts(event.ts, rules.default_zone)
        except (ValidationError, ValueError, OverflowError) as exc:
            await self._refuse(record, "schema", f"identity event unusable: {exc}"[:500], now_ms)
            return None
        if not rules.min_ts_ms <= ts <= now_ms + rules.max_future_ms:
            # The same bounds as events' (PATRONAGE_MAX_FUTURE_S, _EARLIEST_EVENT_TIME).
            why = "ts is in the future or before PATRONAGE_EARLIEST_EVENT_TIME"
            await self._refuse(record, "bad_timestamp", why, now_ms)
            return None
        identifier = (event.identifier.kind, event.identifier.value)
        return LinkEvent(event.type, event.customer_id, identifier, ts, event.event_id)

    async def _announce(self, changes: list[PersonChange], link: LinkEvent) -> None:
        """One identity-changes message per person, acked by Kafka."""
        topic = self.settings.topic(self.settings.topic_identity_changes)
        pending = []
        for change in changes:
            message = IdentityChange(
                # One message per person per link event: a re-run sends the same id.
                event_id=f"identity:{change.person.canonical}:{link.event_id}",
                customer_id=change.person.canonical,
                ts=format_ts(link.ts),
                kind=change.kind,
                identifiers=list(change.person.members),
                previous=list(change.previous),
                cause=link.event_id,
            )
            payload = message.model_dump_json().encode()
            pending.append(await self.send(topic, change.person.canonical.encode(), payload))
            self.changes += 1
        await asyncio.gather(*pending)

    async def _component(self, pair: tuple[str, str]) -> tuple[IdentityGraph | None, set[str]]:
        """The graph of every pair event connected to these nodes (links,
        unlinks and refused links alike: the limits are applied over all)."""
        graph = IdentityGraph(self.limits)
        seen: set[str] = set()
        frontier = set(pair)
        while frontier:
            if len(seen) + len(frontier) > self.settings.identity_max_component:
                return None, seen
            links = await self.store.identity_links(sorted(frontier))
            seen |= frontier
            frontier = set()
            for others in links.values():
                for other, raw in others.items():
                    graph.apply(link_from_json(raw))
                    if other not in seen:
                        frontier.add(other)
        return graph, seen

    async def _displaced(
        self,
        graph: IdentityGraph,
        displaced: Mapping[str, str],
        cause: LinkEvent,
        record: Record,
        now_ms: int,
    ) -> None:
        """Links in force until an older one arrived late and took their
        place under the limits: refused now, each to the DLQ once."""
        batch = PreparedBatch()
        rules = self.settings.rules
        for held in graph.latest.values():
            if held.event_id not in displaced:
                continue
            why = (
                f"{displaced[held.event_id]}; refused when the earlier link "
                f"{cause.event_id} arrived"
            )
            letter = DeadLetter(
                event_id=f"dlq:{record.topic}:displaced:{held.event_id}",
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=why,
                error="identity_limit",
                detected_at=format_ts(now_ms),
                **bounded_payload(_as_published(held), rules.dlq_payload_max_bytes),
            )
            batch.dead_letters.append((held.customer_id.encode(), letter))
            self.refused += 1
        await self.dead_letters(batch)

    async def _refuse(self, record: Record, code: str, why: str, now_ms: int) -> None:
        batch = PreparedBatch()
        dead_letter(batch, record, code, why, now_ms, self.settings.rules)
        await self.dead_letters(batch)
        self.refused += 1
        # The reason may quote the record (ids are personal data): debug only.
        log.info("identity event refused (%s)", code)
        log.debug("identity event refused: %s", why)


def _as_published(link: LinkEvent) -> bytes:
    """A link in its contract's shape (to fix and republish from the DLQ)."""
    kind, value = link.identifier
    doc = {
        "type": link.type,
        "event_id": link.event_id,
        "customer_id": link.customer_id,
        "identifier": {"kind": kind, "value": value},
        "ts": link.ts,
    }
    return json.dumps(doc).encode()


class Resolver:
    """Which profiles are parts of a linked person, and people's merged profiles."""

    def __init__(self, store: ProfileStoreT, cfg: ProfileConfig, cache_size: int) -> None:
        self.store = store
        self.cfg = cfg
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Person | None] = OrderedDict()
        self._generation = -1
        self._asked = 0  # calls of `persons` so far
        self._adopted = 0  # the latest of them whose answers the cache holds

    async def persons(self, keys: Iterable[str]) -> dict[str, Person]:
        """key -> its person, for the keys that are linked."""
        keys = list(keys)
        # Answered from a copy: while this call waits for the store, another
        # (a sweep's alerts, the next link) may clear or trim the cache, and
        # reading it back after the wait stopped the worker (KeyError).
        cached_under = self._generation
        ticket = self._asked = self._asked + 1
        cached = {k: self._cache[k] for k in keys if k in self._cache}
        missing = [k for k in keys if k not in cached]
        # The generation and the uncached people in one round trip.
        generation, found = await self.store.identity_state(missing)
        known = {**cached, **{key: found.get(key) for key in missing}}
        if cached and generation != cached_under:
            # Some person changed since the cached answers were read.
            again = await self.store.persons_of(list(cached))
            known.update((key, again.get(key)) for key in cached)
        # Cached only if no call asked later has been answered already:
        # otherwise these answers may be older than the cache's.
        if ticket > self._adopted:
            self._adopted = ticket
            if generation != self._generation:
                self._cache.clear()  # some person changed: forget them all
                self._generation = generation
            for key in keys:
                self._cache[key] = known[key]
                self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return {key: person for key in keys if (person := known[key]) is not None}

    async def canonical_profiles(
        self, profiles: Mapping[str, Fields], persons: Mapping[str, Person] | None = None
    ) -> dict[str, Fields]:
        """The applied profiles as people: a part of a linked person is
        replaced by the person's merged profile, under its canonical id.
        `persons`: `persons()` of (at least) these profiles, asked already."""
        if persons is None:
            linked = await self.persons(profiles)
        else:
            linked = {k: p for k, p in persons.items() if k in profiles}
        if not linked:
            return dict(profiles)
        out = {k: v for k, v in profiles.items() if k not in linked}
        out.update(await self.merged_profiles(linked.values()))
        return out

    async def merged_profiles(self, people: Iterable[Person]) -> dict[str, Fields]:
        """canonical id -> merged profile, of the people with a stored part."""
        unique = {p.canonical: p for p in people}
        states = await self._parts_of(unique.values())
        merged = {c: self._merged(p, states) for c, p in unique.items()}
        return {c: fields for c, fields in merged.items() if fields}

    async def activity(self, parts: Sequence[str]) -> dict[str, PersonActivity]:
        """The activity of the people of those parts that are linked (lapse
        and at-risk findings are judged per part, sent per person)."""
        linked = await self.persons(parts)
        if not linked:
            return {}
        states = await self._parts_of(linked.values())
        out = {}
        for part, person in linked.items():
            parts_of = [states[m] for m in person.members if m in states]
            orders = [
                float(s.fields["last_order_at"]) for s in parts_of if "last_order_at" in s.fields
            ]
            days = sorted({d for s in parts_of for d in s.days})
            out[part] = PersonActivity(person.canonical, days, max(orders, default=-math.inf))
        return out

    async def _parts_of(self, people: Iterable[Person]) -> dict[str, ProfileState]:
        """Every part of every person, in one round trip."""
        return await self.store.states_of(sorted({m for p in people for m in p.members}))

    async def merged_fields(self, person: Person) -> Fields:
        """The merge of the parts' profiles, with the person's own scoring
        (kept on the canonical id's profile, never merged)."""
        return self._merged(person, await self.store.states_of(person.members))

    def _merged(self, person: Person, states: Mapping[str, ProfileState]) -> Fields:
        parts = [states[m] for m in person.members if m in states]
        if not parts:
            return {}
        fields = stored_fields(merge_all(parts, self.cfg))
        own = states.get(person.canonical)
        if own is not None:
            fields.update({k: v for k, v in stored_fields(own).items() if k in SCORED_FIELDS})
        return fields

    async def view(self, key: str) -> tuple[str, Fields, list[str]] | None:
        """GET /profiles/{any identifier}: (canonical id, profile fields, identifiers)."""
        person = (await self.persons([key])).get(key)
        if person is None:
            own = await self.store.fields_of([key])
            return (key, own[key], [key]) if key in own else None
        fields = await self.merged_fields(person)
        return (person.canonical, fields, list(person.members)) if fields else None
