"""The Redis Lua script against the Python reference, on a real Redis server.

A mock or fakeredis would not have caught the bugs these tests guard: they run
the real Lua interpreter (number formatting with %.17g, struct reading the
packed deltas, 1-based string indexing in the bitmap scan, ZADD LT
semantics, the HSET of changed fields only) and real pipelining of EVALSHA
with NOSCRIPT fallback.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from patronage.models import layout
from patronage.models.batch import PreparedBatch, packed_for_redis
from patronage.models.lapse import Finding, LapseRules, finding_from_json
from patronage.models.layout import PARKED, Trail, decode_profile, decode_trail, split_profile
from patronage.models.profile import (
    DAY_MS,
    Delta,
    PackedDeltas,
    ProfileConfig,
    ProfileState,
    apply,
    fold,
    judge_lapses,
    profile_view,
    short_hash,
    token,
)
from patronage.models.sources import SourceState
from patronage.streams.store import ProfileStore, group_by_customer, make_redis
from tests.compare import assert_views_close

T0 = 1_767_225_600_000
# Small windows and lapse rules, so 120 random events exercise every branch.
CFG = ProfileConfig(
    map_cap=4,
    session_window=5,
    dedupe_window_ms=2 * DAY_MS,
    dedupe_max_events=16,
    lapse=LapseRules(min_visits=3, min_tenure_days=20, min_gap_days=5, gap_multiplier=2.0),
)


def random_deltas(rng: random.Random, customer: str, count: int) -> list[Delta]:
    deltas = []
    offsets: dict[str, int] = {}
    for _ in range(count):
        kind = rng.choice("ooca")
        src = f"{ {'o': 'purchases', 'c': 'clicks', 'a': 'attrs'}[kind] }:{rng.randrange(3)}"
        off = offsets.get(src, -1) + rng.randint(1, 3)
        offsets[src] = off
        t = T0 + rng.randrange(0, 400 * DAY_MS)
        base = {
            "source": src,
            "offset": off,
            "event_token": token(f"{customer}/{src}/{off}"),
            "ts": t,
            "day": t // DAY_MS,
        }
        if kind == "o":
            basket = round(rng.uniform(0, 300), 2) if rng.random() > 0.1 else 0.0
            returned = round(rng.uniform(0, 40), 2) if rng.random() < 0.2 else 0.0
            cats = tuple(
                sorted(
                    {
                        (
                            rng.choice(["a", "b", "c", "d", "e", "#", "C#"]),
                            round(rng.uniform(-5, 90), 2),
                        )
                        for _ in range(rng.randint(1, 3))
                    }
                )
            )
            deltas.append(
                Delta(
                    kind="order",
                    origin=rng.choice(["online", "store"]),
                    basket=basket,
                    returned=returned,
                    net=basket - returned,
                    categories=cats,
                    payment_method=rng.choice(["card", "cash", None]),
                    channel=rng.choice(["email", None]),
                    # Few distinct orders: many are re-sends under a new event id.
                    order_token=token(f"order-{customer}-{rng.randrange(40)}"),
                    **base,
                )
            )  # type: ignore[arg-type]
        elif kind == "c":
            deltas.append(
                Delta(
                    kind="click",
                    session_token=short_hash(f"s{rng.randrange(9)}"),
                    channel=rng.choice(["ads", "email", None]),
                    device=rng.choice(["mobile", "desktop", "tablet", "tv", "watch"]),
                    **base,
                )
            )  # type: ignore[arg-type]
        else:
            deltas.append(
                Delta(
                    kind="attributes",
                    attributes=(
                        ("region", f'"{rng.choice("nsew")}"'),
                        ("children", str(rng.randrange(4))),
                    ),
                    **base,
                )
            )  # type: ignore[arg-type]
    return deltas


async def _roundtrip(
    redis_url: str,
    batches: list[tuple[list[Delta], float]],
    customer: str,
    cluster: bool = False,
) -> tuple[dict[str, object], list[Finding], Trail, dict[str, float | str]]:
    """Apply (batch, event clock) pairs; the view, the pending findings and the
    raw dedupe and lapse state."""
    client = make_redis(redis_url, cluster=cluster)
    store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
    try:
        outbox: list[bytes] = []
        for batch, clock in batches:
            result = await store.apply_batch(
                group_by_customer((customer, d) for d in batch), {customer: 0}, {0: clock}
            )
            outbox = result.outbox.get(customer, outbox)
        view = await store.profile(customer)
        assert view is not None
        keys = store.keys(customer)
        stored = await client.get(keys.profile)
        trail, fields = decode_trail(split_profile(stored)[1]), decode_profile(stored)
        findings = [finding_from_json(item) for item in outbox]
        return view, findings, trail, fields  # type: ignore[return-value]
    finally:
        await store.delete_prefix()
        await client.aclose()


@pytest.mark.parametrize("seed", range(30))
def test_lua_matches_python_reference(redis_up: str, seed: int) -> None:
    check_against_reference(redis_up, seed)


@pytest.mark.parametrize("seed", range(8))
def test_lua_matches_python_reference_on_redis_cluster(redis_cluster: str, seed: int) -> None:
    """Same contract on a 3-master cluster: every script touches one slot."""
    check_against_reference(redis_cluster, seed, cluster=True)


def check_against_reference(url: str, seed: int, cluster: bool = False) -> None:
    rng = random.Random(seed)
    deltas = random_deltas(rng, "c1", rng.randint(1, 120))
    # Split into batches of random size, and redeliver a random suffix.
    batches: list[list[Delta]] = []
    i = 0
    while i < len(deltas):
        size = rng.randint(1, 25)
        batches.append(deltas[i : i + size])
        i += size
    redelivered = deltas[rng.randrange(len(deltas)) :]
    # An event clock that moves forward between batches (sometimes past
    # events still to come: late ones), judged after every batch.
    clocks = sorted(T0 + rng.randrange(0, 450 * DAY_MS) for _ in range(len(batches) + 1))
    schedule = [*zip(batches, clocks, strict=False), (redelivered, clocks[-1])]
    actual, outbox, trail, raw = asyncio.run(_roundtrip(url, schedule, "c1", cluster))
    reference = ProfileState()
    for batch, clock in schedule:
        for d in batch:
            reference, _ = apply(reference, d, CFG)
        judge_lapses(reference, clock, CFG)
    assert_views_close(actual, profile_view("c1", reference.fields))
    assert trail.edges == reference.edges
    # in the same order too: the trail's bytes are the reference's
    assert list(trail.sessions.items()) == list(reference.sessions.items())
    for name in ("judged_day", "lapse_day"):
        want = reference.fields.get(name)
        assert (raw.get(name) is None) == (want is None), name
        assert want is None or float(raw[name]) == want, name
    # The dedupe state itself, record for record: not only what it lets through.
    assert trail.event_ids == [(t, h) for t, h in reference.eids]
    assert trail.order_keys == reference.order_keys
    assert len(outbox) == len(reference.outbox)
    for got, want in zip(outbox, reference.outbox, strict=True):
        assert (got.kind, got.episode, got.ts, got.segment) == (
            want.kind,
            want.episode,
            want.ts,
            want.segment,
        )
        for name in ("usual_gap_days", "spend_total", "span_days"):
            assert math.isclose(
                getattr(got, name), getattr(want, name), rel_tol=1e-12, abs_tol=1e-9
            )


def test_redelivery_and_duplicate_ids_counted_once(redis_up: str) -> None:
    """A redelivered batch (same offsets) and a re-published event (new offset,
    same event id) must both leave the profile as it was."""
    rng = random.Random(99)
    deltas = [
        replace(d, order_token=token(f"order-{i}") if d.order_token else None)
        for i, d in enumerate(random_deltas(rng, "c2", 30))
    ]

    async def run() -> tuple[object, object, list[int]]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
        try:
            first = await store.apply_batch({"c2": deltas})
            before = await store.profile("c2")
            again = await store.apply_batch({"c2": deltas})
            last = deltas[-1]
            republished = replace(last, offset=last.offset + 100)
            dup = await store.apply_batch({"c2": [republished]})
            after = await store.profile("c2")
            return before, after, [first.applied, again.duplicate_offsets, dup.duplicate_events]
        finally:
            await store.delete_prefix()
            await client.aclose()

    before, after, counts = asyncio.run(run())
    assert before == after
    assert counts == [30, 30, 1]


def test_memory_per_profile_is_bounded(redis_up: str) -> None:
    """Thousands of events for one customer over years: memory stays bounded.

    What may grow is the dedupe state, and only as defined: a record per event
    id within the window (at most `dedupe_max_events`) and a token per
    distinct order, for life (layout.py gives their sizes). Everything else
    is fixed-size."""
    rng = random.Random(5)
    rounds = []
    for round_ in range(2):
        deltas = random_deltas(rng, "c3", 2500)
        rounds.append([replace(d, offset=d.offset + round_ * 10_000) for d in deltas])

    async def run() -> list[tuple[int, int]]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", ProfileConfig())
        try:
            sizes = []
            for deltas in rounds:
                # The event clock past every event: visit days are judged and
                # leave the lapse state (it holds only days the clock has not passed).
                clock = max(d.ts for d in deltas) + DAY_MS
                await store.apply_batch({"c3": deltas}, {"c3": 0}, {0: clock})
                value = await client.strlen(store.profile_key("c3"))
                sizes.append((value, await store.memory_usage("c3")))
            return sizes
        finally:
            await store.delete_prefix()
            await client.aclose()

    (value_2500, _), (value_5000, after_5000) = asyncio.run(run())
    first, both = fold(rounds[0], ProfileConfig()), fold(rounds[0] + rounds[1], ProfileConfig())
    event_record = layout.EVENT_TOKEN_BYTES + layout.EVENT_HOUR_BYTES
    dedupe_growth = event_record * (len(both.eids) - len(first.eids)) + layout.ORDER_KEY_BYTES * (
        len(both.order_keys) - len(first.order_keys)
    )
    # The stored bytes grow by the dedupe records (and a few digits of the
    # counters); what Redis allocates for them goes up in size classes a
    # quarter apart, so one value may take up to a quarter more.
    assert value_5000 - value_2500 <= dedupe_growth + 64
    assert after_5000 <= (value_5000 + 128) * 1.25
    assert after_5000 < 8192


def test_an_order_resent_10000_events_later_counts_once(redis_up: str) -> None:
    """Natural keys are kept for life and event ids for a window of event time,
    not for the last N events: a re-send after 10,000 other events (a shop's
    retry queue replayed, a CSV imported twice) still counts once."""
    cfg = ProfileConfig(dedupe_max_events=20_000)
    t0 = 1_767_225_600_000

    def delta(n: int, kind: str, off: int, t: int) -> Delta:
        extra = (
            {"origin": "online", "basket": 10.0, "net": 10.0, "order_token": token("order-A")}
            if kind == "o"
            else {}
        )
        return Delta(
            source="p:0",
            offset=off,
            event_token=token(f"e{n}"),
            ts=t,
            day=t // DAY_MS,
            kind={"o": "order", "c": "click"}[kind],
            **extra,
        )  # type: ignore[arg-type]

    first_order = delta(0, "o", 0, t0)
    click = delta(1, "c", 1, t0 + 1000)
    between = [delta(n, "c", n, t0 + n * 10) for n in range(2, 10_002)]
    # Re-sent under new event ids and offsets, as a producer retry would.
    again = [delta(20_000, "o", 20_000, t0 + 5), replace(click, offset=20_001)]

    async def run() -> tuple[int, int, dict[str, object] | None]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", cfg)
        try:
            await store.apply_batch({"c": [first_order, click]})
            for start in range(0, len(between), 1000):
                await store.apply_batch({"c": between[start : start + 1000]})
            result = await store.apply_batch({"c": again})
            return result.applied, result.duplicate_events, await store.profile("c")
        finally:
            await store.delete_prefix()
            await client.aclose()

    applied, duplicates, view = asyncio.run(run())
    assert (applied, duplicates) == (0, 2)
    assert view is not None and view["orders"] == 1 and view["clicks"] == 10_001


def test_a_scoring_write_never_recreates_an_erased_profile(redis_up: str) -> None:
    """An erasure (or a retention expiry) can land between a batch's apply and
    its segment write. A plain HSET would bring the hash back, without TTL;
    only a real server runs the check and the write as one script."""

    async def run() -> tuple[set[str], int]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
        try:
            deltas = random_deltas(random.Random(3), "gone", 5)
            await store.apply_batch({"gone": deltas, "kept": deltas})
            await store.erase("gone", 0)
            written = await store.store_scores(
                {"gone": {"segment": 2, "segment_version": 1}, "kept": {"segment": 1}}
            )
            return written, int(await client.exists(store.keys("gone").profile))
        finally:
            await store.delete_prefix()
            await client.aclose()

    written, exists = asyncio.run(run())
    assert written == {"kept"} and exists == 0


def test_retention_trims_only_customers_parked_since_before_its_horizon(redis_up: str) -> None:
    """A partition's due set also lists its customers with nothing pending,
    parked at PARKED + the wall time of the batch that last had them; each
    batch trims those parked since before the retention horizon. What only a
    real server shows: ZADD LT adds the new and keeps the earlier pending
    bound, the park script refreshes a parked score an attribute change
    brings without postponing a pending one, and the trim's score range
    (2**50 + epoch ms, exact doubles) reaches parked entries only."""
    retention = 60_000
    wall = 1_800_000_000_000

    def attributes(customer: str, n: int) -> Delta:
        return Delta(
            "customer-attributes:0",
            n,
            token(f"{customer}{n}"),
            T0,
            T0 // DAY_MS,
            "attributes",
            attributes=(("loyalty_tier", '"gold"'),),
        )

    async def run() -> tuple[dict[str, float], list[str]]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG, retention)
        try:
            ts = T0 + DAY_MS
            order = Delta(
                "purchases:0",
                7,
                token("pending7"),
                ts,
                ts // DAY_MS,
                "order",
                origin="online",
                basket=24.9,
                net=24.9,
                order_token=token("order-7"),
            )
            pending = [order]
            first = {"old": [attributes("old", 1)], "kept": [attributes("kept", 2)]}
            await store.apply_batch(
                {**first, "pending": pending}, dict.fromkeys([*first, "pending"], 0), wall_ms=wall
            )
            # Later, but within the retention: an attribute change for two of them.
            later = {"kept": [attributes("kept", 3)], "pending": [attributes("pending", 4)]}
            await store.apply_batch(later, dict.fromkeys(later, 0), wall_ms=wall + retention // 2)
            # Past the horizon of the first batch only.
            await store.apply_batch(
                {"new": [attributes("new", 5)]}, {"new": 0}, wall_ms=wall + retention + 1
            )
            scores = dict(await client.zrange(store.due_key(0), 0, -1, withscores=True))
            due = await store.due_customers(0, 4e12, 10)
            return {k.decode(): v for k, v in scores.items()}, [c for c, _ in due]
        finally:
            await store.delete_prefix()
            await client.aclose()

    scores, due = asyncio.run(run())
    assert set(scores) == {"kept", "pending", "new"}  # "old": parked since the first batch
    assert scores["kept"] == PARKED + wall + retention // 2
    assert scores["new"] == PARKED + wall + retention + 1
    assert due == ["pending"] and scores["pending"] < PARKED


def test_deltas_packed_where_prepared_apply_as_the_objects_do(redis_up: str) -> None:
    """A batch packed in the prepare process (`packed_for_redis` with the
    store's `source_codes`) against the same batch applied as Delta objects,
    in two prefixes of one real server: the same stored profiles byte for
    byte, the same lapse schedule. The source codes are the store's own, given by its Redis
    table: a wrong code would store offsets under a source no redelivery
    check ever finds, which no in-memory store shows."""
    rng = random.Random(5)
    by_customer = {f"c{i}": random_deltas(rng, f"c{i}", rng.randint(1, 12)) for i in range(40)}
    partition_of = {c: i % 3 for i, c in enumerate(by_customer)}
    clocks = {p: float(T0 + 200 * DAY_MS) for p in range(3)}

    async def run() -> list[object]:
        client = aioredis.Redis.from_url(redis_up)
        as_objects = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
        packed_here = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
        try:
            batch = PreparedBatch(by_customer={c: list(d) for c, d in by_customer.items()})
            labels = {d.source for deltas in by_customer.values() for d in deltas}
            codes = await packed_here.source_codes(labels)
            assert codes is not None and set(codes) == labels
            packed_for_redis(batch, codes)
            assert all(isinstance(d, PackedDeltas) for d in batch.by_customer.values())
            outcomes = []
            for store, deltas in ((as_objects, by_customer), (packed_here, batch.by_customer)):
                result = await store.apply_batch(deltas, partition_of, clocks)
                # As stored, offsets under their coded sources included.
                profiles = {c: await client.get(store.profile_key(c)) for c in by_customer}
                due = [await store.due_customers(p, 4e12, 100) for p in range(3)]
                outcomes.append((result.applied, result.outbox, result.lapse_due, profiles, due))
            return outcomes
        finally:
            for store in (as_objects, packed_here):
                await store.delete_prefix()
            await client.aclose()

    objects, packed = asyncio.run(run())
    assert packed == objects
    applied, _, _, profiles, due = objects  # type: ignore[misc]
    assert applied > 100 and all(profiles.values()) and any(due)


def test_a_catch_up_batch_applied_in_chunks_as_in_one_pipeline(
    redis_up: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of more customers than `APPLY_CHUNK_CUSTOMERS` goes in chunks
    on several connections, its bookkeeping after them; the same batch sent
    in one pipeline (the chunk size raised) into another prefix of the same
    real server must store the same bytes and give the same result — one
    customer's update refused as poison in a late chunk included. Only a
    real server runs two connections' pipelines interleaved, and refuses a
    script on a key of the wrong type."""
    from patronage.streams import store as store_module

    rng = random.Random(11)
    customers = [f"c{i}" for i in range(2 * store_module.APPLY_CHUNK_CUSTOMERS + 137)]
    by_customer = {c: random_deltas(rng, c, rng.randint(1, 6)) for c in customers}
    partition_of = {c: i % 3 for i, c in enumerate(customers)}
    clocks = {p: float(T0 + 200 * DAY_MS) for p in range(3)}
    marks = {p: {"clicks": T0 + 150 * DAY_MS + p} for p in range(3)}
    sources = {("clicks", p): SourceState(0, 1000 + p) for p in range(3)}
    poisoned = customers[-3]

    async def apply(chunked: bool) -> tuple[object, ...]:
        client = aioredis.Redis.from_url(redis_up)
        store = ProfileStore(client, f"test{uuid.uuid4().hex[:8]}", CFG)
        try:
            await client.rpush(store.profile_key(poisoned), "not a profile hash")
            with monkeypatch.context() as patch:
                if not chunked:
                    patch.setattr(store_module, "APPLY_CHUNK_CUSTOMERS", len(customers))
                result = await store.apply_batch(
                    by_customer, partition_of, clocks, marks, sources, wall_ms=T0
                )
            connections = len(client.connection_pool._available_connections)
            stored = {c: await client.dump(store.profile_key(c)) for c in customers}
            due = [await store.due_customers(p, 4e12, 10_000) for p in range(3)]
            bookkeeping = (
                await store.clock_marks([0, 1, 2]),
                await store.source_states(list(sources)),
            )
            return (
                (result.applied, result.duplicate_offsets, result.duplicate_events),
                result.outbox,
                result.profiles,
                sorted(result.failed),
                result.lapse_due,
                stored,
                due,
                bookkeeping,
                connections,
            )
        finally:
            await store.delete_prefix()
            await client.aclose()

    chunked = asyncio.run(apply(chunked=True))
    single = asyncio.run(apply(chunked=False))
    *chunked_outcome, chunked_connections = chunked
    *single_outcome, single_connections = single
    assert chunked_connections >= 3 and single_connections == 1  # the paths taken
    assert chunked_outcome == single_outcome
    counts, _, profiles, failed, lapse_due, stored, due, _ = chunked_outcome
    assert failed == [poisoned] and poisoned not in profiles
    assert counts[0] > len(customers) and len(profiles) == len(customers) - 1
    assert lapse_due and any(due) and all(v for c, v in stored.items() if c != poisoned)
