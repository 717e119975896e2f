"""The stored layout on a real Redis: fixed profile fields under one-byte codes
(models/layout.py STORED_NAMES), prefixed ones behind one-byte prefixes
(STORED_PREFIXES), the trail (one value for what layout 2 kept
under five keys) after the profile's map, and the moves from layout 1, which
spelled the names out, and from layouts 2 to 6.

Why a real server: the codes live in the Lua scripts as Redis runs them
(apply, risk and erase loaded with the codes substituted, migrate with a
table of them), and Redis's own cmsgpack packs the maps, which a mock or
fakeredis would not do as Redis does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import time
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from patronage.models.batch import Record, prepare_batch
from patronage.models.layout import (
    ATTRIBUTE_PREFIX,
    FIELDS,
    LAYOUT_5_NAMES,
    LAYOUT_VERSION,
    OFFSET_PREFIX,
    PARKED,
    STORED_PREFIXES,
    TopicCodes,
    attribute_of_stored,
    decode_profile,
    decode_trail,
    field_name,
    layout_2_trail_keys,
    layout_4_members_key,
    layout_4_trail_key,
    layout_key,
    split_profile,
)
from patronage.models.profile import Delta, token
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.cli import main
from patronage.streams.errors import FatalRedisError
from patronage.streams.memory import profile_as_text
from patronage.streams.settings import Settings, settings_with
from patronage.streams.store import ProfileStore, StoredLayoutError, make_redis, redis_for
from tests.integration.harness import Worker, cli_lag, settings_with_topics, wait_for
from tests.integration.test_end_to_end import as_messages, publish_with_metadata


async def _fill(
    store: ProfileStore,
    settings: Settings,
    customers: int,
    seed: int,
    now_ms: int | None = None,
    first_offset: int = 0,
) -> list[str]:
    """Apply a simulated shop's 60 days (clicks, orders, receipts, attributes)
    through the real script, and one scoring and one at-risk write each."""
    now_ms = now_ms or int(time.time() * 1000)
    stream, _ = generate(customers, 60, seed=seed, start_ms=now_ms - 60 * DAY_MS)
    records = [
        Record(
            settings.topic_for_kind[e["type"]], 0, first_offset + n, None, json.dumps(e).encode()
        )
        for n, e in enumerate(stream)
        if not first_offset or e["type"] in ("purchase", "store_receipt")
    ]
    batch = prepare_batch(records, settings.input_topics, settings.rules, now_ms, settings.zone)
    grouped = batch.by_customer
    await store.apply_batch(grouped, dict.fromkeys(grouped, 0), {0: float(now_ms)})
    await store.store_scores(
        {c: {"segment": 2, "segment_version": 7, "segment_since": now_ms} for c in grouped}
    )
    await store.record_risk(dict.fromkeys(grouped, (float(now_ms - DAY_MS), None)))
    return sorted(grouped)


async def _raw_profiles(store: ProfileStore, ids: list[str]) -> dict[str, dict[Any, Any]]:
    """The stored profiles under their stored names (codes for fixed fields)."""
    out = {}
    for customer in ids:
        out[customer] = split_profile(await store.client.get(store.keys(customer).profile))[0]
    return out


def _spelled_out_prefixes(fields: dict[Any, Any], topics: TopicCodes) -> dict[Any, Any]:
    """A map as layouts 1-6 keyed its prefixed fields ("cat:home", "#cat:",
    "o:clicks:0" with the topic's name), with an attribute's time in decimal;
    fixed fields still under codes."""
    out: dict[Any, Any] = {}
    for stored, value in fields.items():
        name = stored if isinstance(stored, int) else field_name(stored)
        if isinstance(stored, str) and stored.startswith(STORED_PREFIXES[ATTRIBUTE_PREFIX]):
            value = attribute_of_stored(value)
        if isinstance(stored, str) and stored.startswith(STORED_PREFIXES[OFFSET_PREFIX]):
            name = OFFSET_PREFIX + topics.source(stored[1:])
        out[name] = value
    return out


def _two_letter(
    fields: dict[Any, Any], topics: TopicCodes, long_names: bool = False
) -> dict[str, Any]:
    """A map as layouts 2-5 keyed it: a fixed field under its two-letter name
    (layout 1: its full name), prefixes spelled out (also a map that is
    already one of those)."""
    out = {}
    for name, value in _spelled_out_prefixes(fields, topics).items():
        field = field_name(name) if isinstance(name, int) else _LONG_NAMES.get(name, name)
        out[field if long_names else LAYOUT_5_NAMES.get(field, field)] = value
    return out


_LONG_NAMES = {short: name for name, short in LAYOUT_5_NAMES.items()}


def _fields_held(raw: dict[str, dict[Any, Any]]) -> int:
    """How many fields the profiles hold: each has a code or a prefix that a
    migration from an older layout renames."""
    return sum(len(fields) for fields in raw.values())


async def _as_hashes(store: ProfileStore, ids: list[str], spelled_out: bool) -> None:
    """As layouts 1 and 2 stored them: each profile a hash of text values,
    under the full names (layout 1) or the short ones (layout 2)."""
    client = store.client
    for customer, fields in (await _raw_profiles(store, ids)).items():
        key = store.keys(customer).profile
        ttl = await client.pttl(key)
        text = profile_as_text(_two_letter(fields, store.topics, long_names=spelled_out))
        await client.delete(key)
        await client.hset(key, mapping=text)  # type: ignore[arg-type]
        if ttl > 0:
            await client.pexpire(key, ttl)


def _as_layout_5(trail: bytes) -> bytes:
    """A trail as layouts 3-5 wrote it: four 4-byte lengths, sessions and
    unjudged days with their ms as doubles, and 64-bit tokens (here layout
    6's 48 bits and two bytes more, as the hash went on) for event ids, with
    a 4-byte hour, and for natural keys."""
    if not trail:
        return trail
    t = decode_trail(trail)
    sessions = b"".join(bytes.fromhex(k) + struct.pack(">d", ms) for k, ms in t.sessions.items())
    events = b"".join(
        bytes.fromhex(k) + b"\xa5\x5a" + struct.pack(">I", hour) for k, hour in t.event_ids
    )
    edges = b"".join(struct.pack(">idd", day, *t.edges[day]) for day in sorted(t.edges))
    orders = b"".join(bytes.fromhex(k) + b"\xa5\x5a" for k in t.order_keys)
    header = struct.pack(">IIII", len(t.bitmap), len(sessions), len(events), len(edges))
    return header + t.bitmap + sessions + events + edges + orders


async def _as_layout_5_values(store: ProfileStore, ids: list[str]) -> None:
    """As layout 5 stored them: the map under two-letter names, then the
    trail in layout 5's records."""
    client = store.client
    for customer in ids:
        key = store.keys(customer).profile
        fields, trail = split_profile(await client.get(key))
        old = msgpack.packb(_two_letter(fields, store.topics)) + _as_layout_5(trail)
        await client.set(key, old, keepttl=True)


async def _trail_beside(store: ProfileStore, ids: list[str]) -> None:
    """As layouts 3 and 4 stored them: the trail (layout 5's records) under a
    key of its own beside the profile's map (with the profile's expiry)."""
    client = store.client
    for customer in ids:
        key = store.keys(customer).profile
        fields, trail = split_profile(await client.get(key))
        await client.set(key, msgpack.packb(_two_letter(fields, store.topics)), keepttl=True)
        beside = layout_4_trail_key(store.prefix, customer)
        await client.set(beside, _as_layout_5(trail))
        ttl = await client.pttl(key)
        if ttl > 0:
            await client.pexpire(beside, ttl)


async def _split_trails(store: ProfileStore, ids: list[str]) -> None:
    """As layout 2 stored them: the trail's parts under keys of their own
    (with the profile's expiry, as every apply set it on each)."""
    client = store.client
    for customer in ids:
        keys = store.keys(customer)
        fields, raw_trail = split_profile(await client.get(keys.profile))
        await client.set(
            keys.profile, msgpack.packb(_two_letter(fields, store.topics)), keepttl=True
        )
        trail = decode_trail(raw_trail)
        ttl = await client.pttl(keys.profile)
        days, sessions, eids, orders, edges = layout_2_trail_keys(store.prefix, customer)
        if trail.bitmap:
            await client.set(days, trail.bitmap)
        if trail.sessions:
            await client.zadd(sessions, {bytes.fromhex(t): ms for t, ms in trail.sessions.items()})
        if trail.event_ids:
            records = (
                bytes.fromhex(t) + b"\xa5\x5a" + struct.pack(">I", hour)
                for t, hour in trail.event_ids
            )
            await client.set(eids, b"".join(records))
        if trail.order_keys:
            await client.set(
                orders, b"".join(bytes.fromhex(k) + b"\xa5\x5a" for k in trail.order_keys)
            )
        if trail.edges:
            await client.hset(
                edges, mapping={str(day): f"{lo}:{hi}" for day, (lo, hi) in trail.edges.items()}
            )
        if ttl > 0:
            for key in (days, sessions, eids, orders, edges):
                await client.pexpire(key, ttl)


async def _states(store: ProfileStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {customer: await store.stored_state(customer) for customer in ids}


async def _filled(
    store: ProfileStore, settings: Settings, seed: int, now_ms: int
) -> tuple[list[str], dict[str, dict[str, Any]], int]:
    """Twenty customers filled (_fill): their ids, stored states and how many
    fields they hold (each renamed by a move from layouts 1-6), before a test
    turns them into an older layout."""
    ids = await _fill(store, settings, 20, seed=seed, now_ms=now_ms)
    return ids, await _states(store, ids), _fields_held(await _raw_profiles(store, ids))


def test_profiles_are_stored_under_short_names_and_read_under_full_ones(
    isolated_env: dict[str, str],
) -> None:
    settings = settings_with(isolated_env)

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            ids = await _fill(store, settings, 30, seed=3)
            raw = await _raw_profiles(store, ids)
            read = await store.fields_of(ids)
            for customer in ids:
                names = set(raw[customer])
                assert not names & FIELDS, f"spelled-out names stored: {names & FIELDS}"
                stored = await client.get(store.keys(customer).profile)
                assert set(decode_profile(stored, store.topics)) == set(read[customer])
                offsets = [n for n in names if str(n).startswith("\x01")]
                assert offsets and all(re.fullmatch("\x01[0-9]:0", n) for n in offsets), names
                assert {"first_seen", "segment", "risk_decided"} <= set(read[customer])
            assert sum("spend_total" in read[c] for c in ids) >= len(ids) // 2
            # What short names and packed numbers save: layout 1's hashes.
            stored = spelled = 0
            for customer in ids:
                # The map alone (the stored value also holds the trail).
                key = f"{settings.key_prefix}:{{{customer}}}:map"
                await client.set(key, msgpack.packb(raw[customer]))
                long_key = f"{settings.key_prefix}:{{{customer}}}:long"
                text = profile_as_text(raw[customer])
                mapping = {field_name(n): v for n, v in text.items()}
                await client.hset(long_key, mapping=mapping)  # type: ignore[arg-type]
                stored += await client.memory_usage(key)
                spelled += await client.memory_usage(long_key)
                await client.delete(key, long_key)
            assert stored < 0.8 * spelled, (stored, spelled)
            # Erasure still finds the segment under its stored name.
            removed, segment = await store.erase(ids[0], 0)
            assert removed >= 1 and segment == 2
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


def test_a_layout_1_prefix_stops_the_worker_until_migrated(backend_env: dict[str, str]) -> None:
    """A prefix filled by the previous version: the worker refuses it with a
    message naming the command, `patronage store migrate` renames every field
    (and nothing on a second run), and the profiles read the same after — on
    a single Redis and on a Redis Cluster (the scan and the renames go to
    every master)."""
    settings = settings_with_topics(backend_env)
    cli = CliRunner()

    async def make_layout_1() -> tuple[list[str], dict[str, dict[str, Any]]]:
        client = redis_for(settings)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            ids = await _fill(store, settings, 25, seed=5)
            before = await _states(store, ids)
            # As layout 1 stored them: hashes of the fields spelled out, the
            # trail's parts under keys of their own, the worker's sources
            # recorded, no layout mark.
            await _split_trails(store, ids)
            await _as_hashes(store, ids, spelled_out=True)
            await client.hset(store.sources_key, "purchases:0", "0:120")
            await client.delete(layout_key(settings.key_prefix), store.topics_key)
            return ids, before
        finally:
            await client.aclose()

    async def stored_after(ids: list[str]) -> tuple[dict[str, dict[str, Any]], bytes]:
        client = redis_for(settings)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            raw = await _raw_profiles(store, ids)
            assert not any(set(fields) & FIELDS for fields in raw.values())
            return await _states(store, ids), await client.get(layout_key(settings.key_prefix))
        finally:
            await client.aclose()

    async def refused() -> None:
        client = redis_for(settings)
        try:
            store = ProfileStore(client, settings.key_prefix, settings.profile_config)
            with pytest.raises(StoredLayoutError, match="patronage store migrate"):
                await store.apply_batch({})
        finally:
            await client.aclose()

    async def accepted() -> None:
        client = redis_for(settings)
        try:
            await ProfileStore(client, settings.key_prefix, settings.profile_config).check_layout()
        finally:
            await client.aclose()

    ids, before = asyncio.run(make_layout_1())
    asyncio.run(refused())
    # A worker of this version stops (exit 70, for its supervisor) at its
    # first batch, applying and committing nothing.
    now = int(time.time() * 1000)
    events, _ = generate(customers=10, days=5, seed=9, start_ms=now - 6 * DAY_MS)
    published = publish_with_metadata(settings, as_messages(events))
    worker = Worker({**backend_env, "PATRONAGE_COMMIT_INTERVAL_S": "0.3"}, name="layout1")
    try:
        with contextlib.suppress(AssertionError):
            worker.start()  # it may exit before its web port answers
        wait_for(lambda: worker.proc is not None and worker.proc.poll() is not None, 60, "exit")
        assert worker.proc is not None
        exit_code = worker.proc.returncode
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert exit_code == 70, log[-2000:]
    assert "PATRONAGE_KEY_PREFIX" in log and "patronage store migrate" in log
    assert cli_lag(backend_env)[0] == len(published)

    moved = cli.invoke(main, ["store", "migrate"], env=backend_env)
    assert moved.exit_code == 0, moved.output
    assert moved.output.startswith("25 profiles"), moved.output
    assert "25 profiles packed, 25 trails merged" in moved.output, moved.output
    assert "25 trails moved into their profile" in moved.output, moved.output
    assert "25 trails compacted" in moved.output, moved.output
    after, mark = asyncio.run(stored_after(ids))
    assert after == before
    assert mark == str(LAYOUT_VERSION).encode()

    again = cli.invoke(main, ["store", "migrate"], env=backend_env)
    assert again.exit_code == 0, again.output
    assert "0 fields renamed, 0 profiles packed, 0 trails merged" in again.output, again.output
    asyncio.run(accepted())  # marked now: a worker may start


def test_a_prefix_marked_by_a_newer_layout_is_refused(isolated_env: dict[str, str]) -> None:
    settings = settings_with(isolated_env)

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            await store.check_layout()  # a new prefix is marked as this layout
            assert await client.get(layout_key(settings.key_prefix)) == b"%d" % LAYOUT_VERSION
            await client.set(layout_key(settings.key_prefix), LAYOUT_VERSION + 1)
            with pytest.raises(StoredLayoutError, match=f"layout {LAYOUT_VERSION + 1}"):
                await ProfileStore(
                    client, settings.key_prefix, settings.profile_config
                ).check_layout()
            with pytest.raises(StoredLayoutError, match="newer"):
                await store.migrate_layout()
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("layout", [2, 3])
def test_a_layout_2_or_3_prefix_is_refused_then_moved(
    isolated_env: dict[str, str], layout: int
) -> None:
    """Layout 2 kept visit days, sessions, dedupe records, natural keys and
    unjudged days under five keys per customer, and layouts 2 and 3 the
    profile as a hash of text: a store of this version refuses the prefix
    until `migrate_layout` merges each customer's five keys into one trail
    and packs the profile (expiry kept), after which everything reads the
    same and a redelivered backlog is still recognised as already applied
    (the dedupe records moved, not only the profile)."""
    settings = settings_with(isolated_env)
    month = 30 * DAY_MS

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
        try:
            now_ms = int(time.time() * 1000)
            ids, before, held = await _filled(store, settings, seed=11, now_ms=now_ms)
            if layout == 2:
                await _split_trails(store, ids)
            else:
                await _trail_beside(store, ids)
            await _as_hashes(store, ids, spelled_out=False)
            await client.set(layout_key(settings.key_prefix), layout)
            with pytest.raises(StoredLayoutError, match=rf"layout {layout}\b.*store migrate"):
                await ProfileStore(
                    client, settings.key_prefix, settings.profile_config, month
                ).apply_batch({})
            moved = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
            merged = 20 if layout == 2 else 0
            assert await moved.migrate_layout() == (20, held, 20, merged, 20, 0, 20)
            assert await moved.migrate_layout() == (20, 0, 0, 0, 0, 0, 0)
            assert await _states(moved, ids) == before
            left = [
                k async for k in client.scan_iter(match=f"{settings.key_prefix}:{{*}}:[dsekvt]")
            ]
            assert left == []
            ttls = [await client.pttl(moved.keys(c).profile) for c in ids]
            assert all(0 < ttl <= month for ttl in ttls), ttls
            # The orders and receipts again, at new offsets (a producer's
            # retry): known by their natural keys, so no figure moves.
            await _fill(moved, settings, 20, seed=11, now_ms=now_ms, first_offset=10**6)
            again = await _states(moved, ids)
            figures = ("orders", "spend_total", "events_applied")
            for customer in ids:
                fields, expected = again[customer]["profile"], before[customer]["profile"]
                for figure in figures:
                    assert fields.get(figure) == expected.get(figure), (customer, figure)
            assert sum(float(before[c]["profile"].get("orders", 0)) for c in ids) > 20
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


def test_a_layout_4_prefix_is_moved_to_one_value_and_one_set(
    isolated_env: dict[str, str],
) -> None:
    """Layout 4 kept the trail under a key of its own beside the profile's
    map, and listed a partition's customers in a members set beside the due
    set, which held only customers with a lapse judgment pending: the
    migration puts each trail after its profile's map (the stored state reads
    the same), moves each member into the due set, parked since the batch
    that last had it, keeps every pending score as it was, deletes the old
    keys, and finds nothing to move when run again. A worker then reads the
    same customers for re-scoring."""
    settings = settings_with(isolated_env)

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            ids = await _fill(store, settings, 20, seed=12)
            held = _fields_held(await _raw_profiles(store, ids))
            due = store.due_key(0)
            pending = {m.decode(): s for m, s in await client.zrange(due, 0, -1, withscores=True)}
            assert set(pending) == set(ids)
            # As layout 4 held them: everyone a member since their last
            # batch; half judged with nothing pending, so out of the due set.
            wall = 1_800_000_000_000
            members = layout_4_members_key(settings.key_prefix, 0)
            await client.zadd(members, {c: wall + i for i, c in enumerate(ids)})
            judged = ids[::2]
            await client.zrem(due, *judged)
            # ... and the trail under a key of its own.
            before = await _states(store, ids)
            await _trail_beside(store, ids)
            await client.set(layout_key(settings.key_prefix), 4)
            with pytest.raises(StoredLayoutError, match=r"layout 4\b.*store migrate"):
                await ProfileStore(
                    client, settings.key_prefix, settings.profile_config
                ).apply_batch({})
            moved = ProfileStore(client, settings.key_prefix, settings.profile_config)
            assert await moved.migrate_layout() == (20, held, 0, 0, 20, 20, 20)
            assert await moved.migrate_layout() == (20, 0, 0, 0, 0, 0, 0)
            assert not await client.exists(members)
            assert await _states(moved, ids) == before
            beside = [layout_4_trail_key(settings.key_prefix, c) for c in ids]
            assert await client.exists(*beside) == 0
            after = {m.decode(): s for m, s in await client.zrange(due, 0, -1, withscores=True)}
            expected = {
                c: PARKED + wall + i if c in judged else pending[c] for i, c in enumerate(ids)
            }
            assert after == expected
            listed: list[str] = []
            cursor = None
            while cursor != 0:
                cursor, part = await moved.partition_members(0, cursor or 0, 7)
                listed.extend(part)
            assert sorted(listed) == ids
            assert [c for c, _ in await moved.due_customers(0, 4e12, 100)] == sorted(
                (c for c in ids if c not in judged), key=lambda c: (pending[c], c)
            )
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


def test_a_layout_5_prefix_gets_codes_and_shorter_trails_and_still_knows_every_event(
    isolated_env: dict[str, str],
) -> None:
    """Layout 5 kept fixed fields under two-letter names and wrote each trail
    with 12-byte dedupe records (a 64-bit event token, a 4-byte hour),
    12-byte session records and a 16-byte header: the migration moves each
    field under its code and rewrites the trail in layout 6's records (expiry
    kept, the stored state reads the same, every value shorter), and the clicks and
    attributes whose ids the trail holds, and every order and receipt, sent
    again at new offsets, are all known as re-sends — their stored 64-bit
    tokens were cut to the 48 bits a new event or order gets, so a mismatch
    would count each one twice."""
    settings = settings_with(isolated_env)
    month = 30 * DAY_MS

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
        try:
            now_ms = int(time.time() * 1000)
            ids, before, held = await _filled(store, settings, seed=13, now_ms=now_ms)
            assert held > 20 * 25, held
            sizes = {c: await client.strlen(store.keys(c).profile) for c in ids}
            await _as_layout_5_values(store, ids)
            longer = {c: await client.strlen(store.keys(c).profile) for c in ids}
            assert all(longer[c] > sizes[c] for c in ids), (longer, sizes)
            await client.set(layout_key(settings.key_prefix), 5)
            with pytest.raises(StoredLayoutError, match=r"layout 5\b.*store migrate"):
                await ProfileStore(
                    client, settings.key_prefix, settings.profile_config, month
                ).apply_batch({})
            moved = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
            assert await moved.migrate_layout() == (20, held, 0, 0, 0, 0, 20)
            assert await moved.migrate_layout() == (20, 0, 0, 0, 0, 0, 0)
            assert await _states(moved, ids) == before
            assert {c: await client.strlen(moved.keys(c).profile) for c in ids} == sizes
            ttls = [await client.pttl(moved.keys(c).profile) for c in ids]
            assert all(0 < ttl <= month for ttl in ttls), ttls

            # Every order and receipt (natural keys, for life), and every
            # other event whose id the dedupe window holds.
            held = {c: {t for t, _ in before[c]["event_ids"]} for c in ids}
            stream, _ = generate(20, 60, seed=13, start_ms=now_ms - 60 * DAY_MS)
            orders = [e for e in stream if e["type"] in ("purchase", "store_receipt")]
            recent = [e for e in stream if token(e["event_id"]) in held.get(e["customer_id"], ())]
            assert len(orders) >= 50 and len(recent) >= 100, (len(orders), len(recent))
            resent = orders + [e for e in recent if e not in orders]
            records = [
                Record(
                    settings.topic_for_kind[e["type"]], 0, 10**6 + n, None, json.dumps(e).encode()
                )
                for n, e in enumerate(resent)
            ]
            batch = prepare_batch(
                records, settings.input_topics, settings.rules, now_ms, settings.zone
            )
            result = await moved.apply_batch(
                batch.by_customer, dict.fromkeys(batch.by_customer, 0), {0: float(now_ms)}
            )
            assert (result.applied, result.duplicate_events) == (0, len(resent))
            # Nothing moves but the offsets the batch was read at.
            again = await _states(moved, ids)
            for customer in ids:
                figures, expected = again[customer]["profile"], before[customer]["profile"]
                moved_fields = {
                    n for n in figures.keys() | expected.keys() if figures.get(n) != expected.get(n)
                }
                assert moved_fields <= {n for n in figures if n.startswith("o:")}, moved_fields
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


def test_a_layout_6_prefix_gets_prefix_bytes_and_base_36_times(
    isolated_env: dict[str, str],
) -> None:
    """Layout 6 spelled out each prefixed field's prefix ("cat:home",
    "o:clicks:0", "#cat:") and an attribute's time in decimal: the migration
    puts each behind its byte and each time in base 36 (expiry kept, the
    stored state reads the same, every value shorter, nothing spelled out
    left), and then an attribute change older than a migrated one is still
    refused and a newer one taken (the script compares migrated times),
    the migrated offsets still skip a redelivery, and the distinct-key counts
    still cap a map."""
    settings = settings_with(isolated_env)
    month = 30 * DAY_MS

    async def run() -> None:
        client = make_redis(settings.redis_url)
        store = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
        try:
            now_ms = int(time.time() * 1000)
            ids, before, _ = await _filled(store, settings, seed=14, now_ms=now_ms)
            raw = await _raw_profiles(store, ids)
            prefixed = sum(isinstance(n, str) for fields in raw.values() for n in fields)
            assert prefixed > 20 * 10, prefixed
            sizes = {c: await client.strlen(store.keys(c).profile) for c in ids}
            for customer in ids:
                key = store.keys(customer).profile
                fields, trail = split_profile(await client.get(key))
                old = msgpack.packb(_spelled_out_prefixes(fields, store.topics)) + trail
                await client.set(key, old, keepttl=True)
            longer = {c: await client.strlen(store.keys(c).profile) for c in ids}
            assert all(longer[c] > sizes[c] for c in ids), (longer, sizes)
            await client.set(layout_key(settings.key_prefix), 6)
            # Layout 6 gave topics no codes: each is given one as the
            # migration meets it in a profile.
            await client.delete(store.topics_key)
            with pytest.raises(StoredLayoutError, match=r"layout 6\b.*store migrate"):
                await ProfileStore(
                    client, settings.key_prefix, settings.profile_config, month
                ).apply_batch({})
            moved = ProfileStore(client, settings.key_prefix, settings.profile_config, month)
            assert await moved.migrate_layout() == (20, prefixed, 0, 0, 0, 0, 0)
            assert await moved.migrate_layout() == (20, 0, 0, 0, 0, 0, 0)
            assert await _states(moved, ids) == before
            assert {c: await client.strlen(moved.keys(c).profile) for c in ids} == sizes
            spelled = tuple(STORED_PREFIXES) + tuple("#" + p for p in STORED_PREFIXES)
            for fields in (await _raw_profiles(moved, ids)).values():
                assert not [n for n in fields if isinstance(n, str) and n.startswith(spelled)]
            ttls = [await client.pttl(moved.keys(c).profile) for c in ids]
            assert all(0 < ttl <= month for ttl in ttls), ttls

            # One customer's region changed before its stored change, one's
            # after, each by an event of its own (not a re-send).
            with_region = [c for c in ids if "a:region" in before[c]["profile"]]
            older, newer = with_region[:2]
            stamp = {
                c: int(before[c]["profile"]["a:region"].partition("|")[0]) for c in (older, newer)
            }
            changes = [
                {
                    "type": "customer_attributes",
                    "customer_id": customer,
                    "attributes": {"region": "Île-de-France"},
                    "event_id": f"layout6-{customer}",
                    "ts": stamp[customer] + (-1 if customer == older else 1),
                }
                for customer in (older, newer)
            ]
            # ... and a redelivery of the first records the stored offsets
            # cover: skipped by offset.
            stream, _ = generate(20, 60, seed=14, start_ms=now_ms - 60 * DAY_MS)
            topic = settings.topic_for_kind
            records = [
                Record(topic[e["type"]], 0, n, None, json.dumps(e).encode())
                for n, e in enumerate(stream[:50])
            ] + [
                Record(topic["customer_attributes"], 0, 10**6 + n, None, json.dumps(e).encode())
                for n, e in enumerate(changes)
            ]
            batch = prepare_batch(
                records, settings.input_topics, settings.rules, now_ms, settings.zone
            )
            result = await moved.apply_batch(
                batch.by_customer, dict.fromkeys(batch.by_customer, 0), {0: float(now_ms)}
            )
            assert (result.applied, result.duplicate_offsets) == (2, 50)
            read = await moved.fields_of([older, newer])
            assert read[older]["a:region"] == before[older]["profile"]["a:region"]
            assert read[newer]["a:region"] == f'{stamp[newer] + 1}|"Île-de-France"'
            # The counts moved with their maps: a map at its cap stays there.
            for customer in ids:
                fields = read.get(customer) or (await moved.fields_of([customer]))[customer]
                for prefix in ("cat:", "ch:", "dev:", "pay:"):
                    keys = [n for n in fields if n.startswith(prefix) and n != prefix + "_other"]
                    assert fields.get("#" + prefix, 0) == len(keys), (customer, prefix)
        finally:
            await store.delete_prefix()
            await client.aclose()

    asyncio.run(run())


def test_a_topic_code_given_by_another_worker_is_read_and_a_lost_table_stops(
    isolated_env: dict[str, str],
) -> None:
    """Two workers' stores: one gives a code to a topic the other has not
    seen and writes it into a shared customer's profile; the other reads that
    profile (its table read again), applies to it and keeps the first
    worker's offset. With the table deleted, reading stops with a message
    naming the key instead of taking the offset for another topic's."""
    settings = settings_with(isolated_env)
    t0 = 1_767_225_600_000  # 2026-01-01

    def order(source: str, offset: int, key: str) -> Delta:
        return Delta(source, offset, token(key), t0, t0 // DAY_MS, "order", basket=5.0)

    async def run() -> None:
        client = make_redis(settings.redis_url)
        first = ProfileStore(client, settings.key_prefix, settings.profile_config)
        second = ProfileStore(client, settings.key_prefix, settings.profile_config)
        try:
            await second.apply_batch({"anna": [order("shop.web.clicks.v1:0", 3, "w")]})
            await first.apply_batch({"anna": [order("shop.store.receipts.v1:2", 7, "s")]})
            assert set(second.topics.code_of) == {"shop.web.clicks.v1"}
            fields = (await second.fields_of(["anna"]))["anna"]
            assert (fields["o:shop.web.clicks.v1:0"], fields["o:shop.store.receipts.v1:2"]) == (
                3,
                7,
            )
            result = await second.apply_batch(
                {"anna": [order("shop.store.receipts.v1:2", 7, "s2")]}
            )
            assert (result.applied, result.duplicate_offsets) == (0, 1)
            await client.delete(first.topics_key)
            with pytest.raises(FatalRedisError, match=r"\{topics\}"):
                await ProfileStore(client, settings.key_prefix, settings.profile_config).fields_of(
                    ["anna"]
                )
        finally:
            await first.delete_prefix()
            await client.aclose()

    asyncio.run(run())
