"""Identity stitching through the whole pipeline, in memory: events keyed by
customer, cookie or card, links and unlinks shuffled and redelivered, and
each person's profile against an independent fold of their events."""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

import redis

from patronage.models.batch import Record
from patronage.models.contracts import routing_key
from patronage.models.identity import IdentityGraph, Limits, LinkEvent
from patronage.models.layout import SCORED_FIELDS
from patronage.models.profile import fold, to_delta
from patronage.models.risk import TIER, tiers
from patronage.models.simulate import generate, stitched
from patronage.models.sources import source_label
from patronage.models.timeunits import DAY_MS
from patronage.models.validate import Accepted, validate
from patronage.streams.memory import (
    MemoryModelStore,
    MemoryProfileStore,
    RecordingProducer,
    StaticLog,
    stored_fields,
)
from patronage.streams.pipeline import PERSONS_AHEAD, Pipeline
from patronage.streams.segmenting import partition_for
from patronage.streams.settings import Settings
from tests.schema_fuzz import ADVERSARIAL_VALUES, leaf_paths, render, replaced
from tests.unit.test_pipeline import KIND_TOPIC, pipeline_for
from tests.unit.test_risk import FITTED

START_MS = 1_767_225_600_000  # 2026-01-01
NOW_MS = START_MS + 200 * DAY_MS
# Judging marks depend on when sweeps ran, not on the events.
MARKS = {"judged_day", "lapse_day", "risk_decided", "risk_episode"}


def profile_key(event: dict[str, Any]) -> str:
    key = routing_key(event)
    assert key is not None, event
    return key


def event_records(events: list[dict[str, Any]], partitions: int) -> list[Record]:
    """Keyed as a shop keys them: by the identifier the event carries."""
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for event in events:
        topic, key = KIND_TOPIC[event["type"]], profile_key(event)
        partition = partition_for(key, partitions)
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        records.append(Record(topic, partition, offset, key.encode(), json.dumps(event).encode()))
    return records


def link_records(links: list[dict[str, Any]]) -> list[Record]:
    return [
        Record("identities", 0, n, link["customer_id"].encode(), json.dumps(link).encode())
        for n, link in enumerate(links)
    ]


def event_deltas(
    records: list[Record], settings: Settings, now_ms: int = NOW_MS
) -> dict[str, list[tuple[int, Any]]]:
    """Each profile key's deltas with their delivery position, validated
    outside the pipeline."""
    deltas: dict[str, list[tuple[int, Any]]] = {}
    for position, record in enumerate(records):
        kind = settings.input_topics[record.topic]
        outcome = validate(record.value or b"", kind, now_ms, settings.rules)  # type: ignore[arg-type]
        assert isinstance(outcome, Accepted), outcome
        src = source_label(record.topic, record.partition, 0)
        delta = to_delta(
            outcome.event, outcome.ts_ms, src, record.offset, settings.rules.currencies
        )
        deltas.setdefault(outcome.event.profile_id, []).append((position, delta))
    return deltas


def comparable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in SCORED_FIELDS and k not in MARKS}


def assert_fields_close(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    actual, expected = comparable(actual), comparable(expected)
    assert actual.keys() == expected.keys(), actual.keys() ^ expected.keys()
    for key, want in expected.items():
        got = actual[key]
        try:
            assert math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-6), key
        except ValueError:
            assert got == want, key


def run_stitched(seed: int) -> tuple[Any, Pipeline, MemoryProfileStore, list[Record]]:
    settings = Settings(lapse_clock="event", partitions=4)
    events, _ = generate(customers=40, days=120, seed=seed, start_ms=START_MS)
    world = stitched(events, seed)
    pipe, store = pipeline_for(settings, NOW_MS)
    asyncio.run(pipe.segmenter.models.save_parameters(FITTED))
    records = event_records(world.events, settings.partitions)
    links = link_records(world.identities)
    rng = random.Random(seed)
    # Links shuffled and a third redelivered, interleaved with event batches.
    deliveries = links + rng.sample(links, len(links) // 3)
    rng.shuffle(deliveries)
    batches = [records[i : i + 250] for i in range(0, len(records), 250)]

    async def run() -> None:
        pending = list(deliveries)
        for batch in batches:
            await pipe.process(batch, StaticLog())
            for _ in range(rng.randint(0, 2 * len(deliveries) // len(batches) + 1)):
                if pending:
                    await pipe.link(pending.pop())
        for record in pending:
            await pipe.link(record)

    asyncio.run(run())
    return world, pipe, store, records


def test_every_person_is_the_fold_of_their_events_whatever_the_link_order() -> None:
    world, pipe, store, records = run_stitched(seed=3)
    settings = pipe.settings
    deltas = event_deltas(records, settings)
    groups: dict[str, set[str]] = {}
    for key, person in world.person_of.items():
        groups.setdefault(person, set()).add(key)
    assert any(len(g) == 3 for g in groups.values()), "cookie, account and card in one person"
    assert world.wrong, "the population has wrong links to undo"
    for canonical, members in groups.items():
        linked = {k: store.persons[k] for k in members if k in store.persons}
        if len(members) == 1:
            assert not linked, (canonical, linked)  # wrong links undone
        else:
            assert {p.members for p in linked.values()} == {tuple(sorted(members))}
            assert {p.canonical for p in linked.values()} == {canonical}
        ordered = sorted(pair for m in members for pair in deltas.get(m, []))
        expected = stored_fields(fold([d for _, d in ordered], settings.profile_config))
        for key in members:
            if not ordered:  # a guest's account: every event of theirs was under the cookie
                assert asyncio.run(pipe.resolver.view(key)) is None
                continue
            found = asyncio.run(pipe.resolver.view(key))
            assert found is not None, key
            got_canonical, fields, identifiers = found
            assert got_canonical == canonical and sorted(identifiers) == sorted(members)
            assert_fields_close(fields, expected)


def assert_changes_end_in_the_true_people(
    changes: list[dict[str, Any]], person_of: dict[str, str]
) -> None:
    """The last change naming each identifier is its true person."""
    last: dict[str, dict[str, Any]] = {}
    for change in changes:
        for key in change["identifiers"]:
            last[key] = change
    for key, person in person_of.items():
        if key in last:
            want = sorted(k for k, p in person_of.items() if p == person)
            assert last[key]["identifiers"] == want, key
            assert last[key]["customer_id"] == person


def test_identity_changes_are_sent_once_each_and_end_in_the_true_people() -> None:
    world, pipe, _, _ = run_stitched(seed=5)
    producer = pipe.producer
    changes = producer.on("identity-changes")  # type: ignore[attr-defined]
    ids = [c["event_id"] for c in changes]
    assert len(ids) == len(set(ids)) > 0
    assert_changes_end_in_the_true_people(changes, world.person_of)
    # Redelivering every link changes nothing and sends nothing.
    before = len(producer.sent)  # type: ignore[attr-defined]

    async def again() -> None:
        for record in link_records(world.identities):
            await pipe.link(record)

    asyncio.run(again())
    assert len(producer.sent) == before  # type: ignore[attr-defined]


def test_scores_follow_the_canonical_customer() -> None:
    """A linked cookie's events are scored as its person: the tier stored on
    the canonical customer is the merged profile's, and no tier is sent for
    a linked cookie."""
    assert_later_cookies_scored_as_people(*run_stitched(seed=3))


def test_a_failed_lookup_of_people_is_asked_again() -> None:
    """A batch's people are looked up while Redis applies it; when that
    lookup fails (Redis restarting), they are asked again after the apply,
    under the retry policy — the batch is not lost, nor scored per cookie."""
    world, pipe, store, records = run_stitched(seed=3)
    pipe.resolver._cache.clear()
    answer = store.identity_state
    failures: list[str] = []

    async def once_unavailable(nodes: Any) -> Any:
        task = asyncio.current_task()
        if not failures and task is not None and task.get_name() == PERSONS_AHEAD:
            failures.append("refused")
            raise redis.exceptions.ConnectionError("Connection refused")
        return await answer(nodes)

    store.identity_state = once_unavailable  # type: ignore[method-assign]
    assert_later_cookies_scored_as_people(world, pipe, store, records)
    assert failures == ["refused"]


def assert_later_cookies_scored_as_people(
    world: Any, pipe: Pipeline, store: MemoryProfileStore, records: list[Record]
) -> None:
    cookies = {k: p for k, p in store.persons.items() if k.startswith("anonymous_id:")}
    assert cookies
    last_ts = max(json.loads(r.value or b"")["ts"] for r in records)
    extra = [
        {
            "type": "click",
            "event_id": f"later-{n}",
            "anonymous_id": key.partition(":")[2],
            "session_id": f"later-{n}",
            "page_type": "home",
            "ts": last_ts + DAY_MS,
        }
        for n, key in enumerate(sorted(cookies))
    ]
    tail = event_records(world.events + extra, pipe.settings.partitions)[len(records) :]
    sent = len(pipe.producer.sent)  # type: ignore[attr-defined]
    asyncio.run(pipe.process(tail, StaticLog()))
    later = [c["customer_id"] for c in pipe.producer.on("segment-changes")[sent:]]  # type: ignore[attr-defined]
    assert not set(later) & set(cookies)
    people = {p.canonical: p for p in cookies.values()}
    merged = {c: asyncio.run(pipe.resolver.merged_fields(p)) for c, p in people.items()}
    judged = tiers(merged, FITTED, float(last_ts + DAY_MS), pipe.settings.prediction_discount_rate)
    assert judged
    for canonical, (tier, _) in judged.items():
        assert store.states[canonical].fields.get(TIER) == tier, canonical


def link(customer: str, card: str, ts: int, event_id: str, kind: str = "link") -> Record:
    body = {
        "type": kind,
        "event_id": event_id,
        "customer_id": customer,
        "identifier": {"kind": "loyalty_card", "value": card},
        "ts": ts,
    }
    return Record("identities", 0, 0, customer.encode(), json.dumps(body).encode())


def test_a_guest_card_over_the_limit_goes_to_the_dlq_and_merges_nobody() -> None:
    settings = Settings()
    pipe, store = pipeline_for(settings, NOW_MS)

    async def run() -> None:
        await pipe.link(link("c-1", "GUEST-0001", START_MS, "l1"))
        await pipe.link(link("c-2", "GUEST-0001", START_MS + 1, "l2"))
        await pipe.link(link("c-3", "GUEST-0001", START_MS + 2, "l3"))
        await pipe.link(link("c-2", "GUEST-0001", START_MS + 2, "bad", kind="merge"))
        await pipe.link(link("loyalty_card:X", "GUEST-0001", START_MS + 2, "bad2"))
        # Arriving late with the earliest time: it takes the card, c-1's link goes.
        await pipe.link(link("c-0", "GUEST-0001", START_MS - 1, "l0"))

    asyncio.run(run())
    letters = pipe.producer.on("events-dlq")  # type: ignore[attr-defined]
    assert [(d["error"], json.loads(d["payload"])["event_id"]) for d in letters] == [
        ("identity_limit", "l2"),
        ("identity_limit", "l3"),
        ("schema", "bad"),
        ("schema", "bad2"),
        ("identity_limit", "l1"),
    ]
    assert "already linked to 1 customers (the limit)" in letters[0]["reason"]
    assert "refused when the earlier link l0 arrived" in letters[-1]["reason"]
    assert store.persons["loyalty_card:GUEST-0001"].members == ("c-0", "loyalty_card:GUEST-0001")
    # The graph logic agrees: the oldest link holds.
    graph = IdentityGraph(Limits())
    for n, c in enumerate(["c-0", "c-1", "c-2", "c-3"]):
        graph.apply(LinkEvent("link", c, ("loyalty_card", "GUEST-0001"), START_MS + n, f"l{n}"))
    assert set(graph.people().values()) == {"c-0"}


def test_unlink_restores_the_parts_and_erasure_removes_every_identifier() -> None:
    settings = Settings(partitions=1)
    pipe, store = pipeline_for(settings, NOW_MS)
    receipt = {
        "type": "store_receipt",
        "event_id": "r1",
        "loyalty_card": "4006381333931",
        "ts": START_MS + DAY_MS,
        "receipt_id": "r1",
        "store_id": "hamburg-altona",
        "items": [{"sku": "4006381333931", "quantity": 0.532, "unit_price": 3.99}],
        "total": 2.12,
        "currency": "EUR",
    }
    click = {
        "type": "click",
        "event_id": "k1",
        "customer_id": "c-7",
        "session_id": "s1",
        "page_type": "product",
        "ts": START_MS + 2 * DAY_MS,
    }

    async def run() -> tuple[Any, Any, Any]:
        await pipe.process(event_records([receipt, click], 1), StaticLog())
        card_alone = await pipe.resolver.view("loyalty_card:4006381333931")
        await pipe.link(link("c-7", "4006381333931", START_MS + 3 * DAY_MS, "l1"))
        joined = await pipe.resolver.view("c-7")
        await pipe.link(link("c-7", "4006381333931", START_MS + 4 * DAY_MS, "u1", "unlink"))
        return card_alone, joined, await pipe.resolver.view("loyalty_card:4006381333931")

    card_alone, joined, after = asyncio.run(run())
    assert joined[0] == "c-7" and joined[2] == ["c-7", "loyalty_card:4006381333931"]
    assert joined[1]["orders"] == 1 and joined[1]["clicks"] == 1
    assert after == card_alone  # the part was never changed by the merge

    async def erase() -> None:
        await pipe.link(link("c-7", "4006381333931", START_MS + 5 * DAY_MS, "l2"))
        body = json.dumps({"customer_id": "c-7", "request_id": "gdpr-1"}).encode()
        await pipe.erase(Record("erasure-requests", 0, 0, b"c-7", body))

    asyncio.run(erase())
    assert store.states == {} and store.links == {} and store.persons == {}


def test_a_regular_who_moves_from_the_web_shop_to_the_store_is_not_lapsed() -> None:
    """The issue's example: weekly online orders for three months, then
    weekly till receipts paid with a loyalty card that is linked to the
    account. Without the link the account lapses and is at risk; with it,
    the person is neither."""

    def run(linked: bool) -> list[dict[str, Any]]:
        settings = Settings(lapse_clock="wall", partitions=1)
        events = []
        for week in range(26):
            ts = START_MS + week * 7 * DAY_MS
            if week < 13:
                events.append(
                    {
                        "type": "purchase",
                        "event_id": f"o-{week}",
                        "customer_id": "c-42",
                        "order_id": f"o-{week}",
                        "ts": ts,
                        "items": [{"sku": "espresso-1kg", "quantity": 1, "unit_price": 17.9}],
                        "total": 17.9,
                        "currency": "EUR",
                    }
                )
            else:
                events.append(
                    {
                        "type": "store_receipt",
                        "event_id": f"r-{week}",
                        "loyalty_card": "2400000123457",
                        "receipt_id": f"r-{week}",
                        "store_id": "muenchen-pasing",
                        "ts": ts,
                        "items": [{"sku": "espresso-1kg", "quantity": 1, "unit_price": 17.9}],
                        "total": 17.9,
                        "currency": "EUR",
                    }
                )
        records = event_records(events, 1)
        now = [START_MS]
        store = MemoryProfileStore(settings.profile_config)
        producer = RecordingProducer()
        pipe = Pipeline(settings, store, MemoryModelStore(), producer, clock=lambda: now[0] / 1000)

        async def live() -> None:
            await pipe.segmenter.models.save_parameters(FITTED)
            if linked:
                await pipe.link(link("c-42", "2400000123457", START_MS, "l1"))
            for record in records:
                now[0] = max(now[0], json.loads(record.value or b"")["ts"] + 60_000)
                await pipe.process([record], StaticLog())
                await pipe.sweeper.sweep({0})

        asyncio.run(live())
        return producer.on("lapse-alerts")

    unlinked = run(linked=False)
    kinds = {(a["customer_id"], a["kind"]) for a in unlinked}
    assert kinds == {("c-42", "lapsed"), ("c-42", "at_risk")}, kinds
    assert run(linked=True) == []


def test_a_merge_scores_the_person_once() -> None:
    """No event needed: the link itself re-values the canonical customer
    (here from one small web order to a weekly store regular's value)."""
    settings = Settings(partitions=1)
    pipe, _ = pipeline_for(settings, START_MS + 20 * 7 * DAY_MS)
    web = {
        "type": "purchase",
        "event_id": "o-1",
        "customer_id": "c-9",
        "order_id": "o-1",
        "ts": START_MS,
        "items": [{"sku": "filter-paper", "quantity": 1, "unit_price": 4.5}],
        "total": 4.5,
        "currency": "EUR",
    }
    store_visits = [
        {
            "type": "store_receipt",
            "event_id": f"r-{week}",
            "loyalty_card": "2400000999990",
            "receipt_id": f"r-{week}",
            "store_id": "koeln-ehrenfeld",
            "ts": START_MS + week * 7 * DAY_MS,
            "items": [{"sku": "weekly-shop", "quantity": 1, "unit_price": 86.4}],
            "total": 86.4,
            "currency": "EUR",
        }
        for week in range(1, 19)
    ]

    def tiers_of(customer: str) -> list[dict[str, Any]]:
        changes = pipe.producer.on("segment-changes")  # type: ignore[attr-defined]
        return [c for c in changes if c["kind"] == "tier" and c["customer_id"] == customer]

    async def run() -> tuple[int, int, int]:
        await pipe.segmenter.models.save_parameters(FITTED)
        await pipe.process(event_records([web, *store_visits], 1), StaticLog())
        # The card scored on its own before the link: one member of segment 2.
        await pipe.store.store_scores({"loyalty_card:2400000999990": {"segment": 2}})
        await pipe.segmenter.models.adjust_sizes({2: 1})
        before = len(tiers_of("c-9"))
        await pipe.link(link("c-9", "2400000999990", START_MS + 19 * 7 * DAY_MS, "l1"))
        after = len(tiers_of("c-9"))
        await pipe.link(link("c-9", "2400000999990", START_MS + 19 * 7 * DAY_MS, "l1"))
        return before, after, len(tiers_of("c-9"))

    before, after, redelivered = asyncio.run(run())
    # The card is counted in no segment now: its person is scored instead.
    assert asyncio.run(pipe.segmenter.models.sizes()).get(2) == 0
    assert (
        "segment"
        not in asyncio.run(pipe.store.fields_of(["loyalty_card:2400000999990"]))[
            "loyalty_card:2400000999990"
        ]
    )
    assert after == before + 1 == redelivered
    change = tiers_of("c-9")[-1]
    assert change["previous_tier"] != "best" and change["tier"] == "best", change


LINK_SAMPLE = {
    "type": "link",
    "event_id": "login-8812",
    "customer_id": "c-1042",
    "identifier": {"kind": "anonymous_id", "value": "0b7f5c2e-3d41-4c8e-9a6b-52f1d0c7e913"},
    "ts": "2026-03-01T10:15:00+01:00",
}


def test_every_leaf_of_a_link_with_every_adversarial_value_is_applied_or_a_dead_letter() -> None:
    """One bad identity record must never stop the agent (it would stop the
    worker): each is applied or lands on the DLQ with a reason."""
    payloads = [
        render(replaced(LINK_SAMPLE, path, value))
        for path in leaf_paths(LINK_SAMPLE)
        for value in ADVERSARIAL_VALUES
    ]
    refused = 0
    pipe, store = pipeline_for(Settings(), NOW_MS)
    for payload in payloads:
        # Each the first link the store sees: a change of people to announce.
        store.links.clear()
        store.persons.clear()
        pipe.producer.sent.clear()  # type: ignore[attr-defined]
        asyncio.run(pipe.link(Record("identities", 0, 0, None, payload)))
        letters = pipe.producer.on("events-dlq")  # type: ignore[attr-defined]
        changes = pipe.producer.on("identity-changes")  # type: ignore[attr-defined]
        assert bool(letters) != bool(changes), payload[:200]
        assert all(letter["reason"] for letter in letters)
        refused += bool(letters)
        for node, person in store.persons.items():
            assert node in person.members and "{" not in node
    assert refused > len(payloads) / 2
