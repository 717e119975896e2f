"""Redis profile store: one round trip per batch, one atomic script per customer.

Every key of a customer shares the hash tag {customer_id}, so the apply
script never crosses slots on Redis Cluster. Key names, hash fields and the
script's arguments are defined once, in models/layout.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from patronage.models.identity import Person, person_from_json, person_to_json
from patronage.models.layout import (
    APPLY_SETTINGS,
    LAYOUT_VERSION,
    NEXT_TOPIC_CODE,
    PARKED,
    REPLY,
    SCORED_FIELDS,
    STORED_NAMES,
    STORED_PREFIXES,
    CustomerKeys,
    TopicCodes,
    UnknownTopicCode,
    clock_key,
    customer_keys,
    decode_profile,
    decode_trail,
    due_key,
    identity_generation_key,
    identity_links_key,
    layout_2_trail_keys,
    layout_4_members_key,
    layout_4_trail_key,
    layout_key,
    lua_stored_names,
    person_key,
    profile_key,
    risk_key,
    risk_version_key,
    sources_key,
    split_profile,
    stored_text,
    topics_key,
)
from patronage.models.profile import (
    Delta,
    PackedDeltas,
    ProfileConfig,
    ProfileState,
    first_activity,
    packed_deltas,
    profile_view,
)
from patronage.models.sources import SourceState
from patronage.models.timeunits import HOUR_MS
from patronage.streams.errors import FatalRedisError, classify, needs_slot_refresh
from patronage.streams.memory import profile_as_text, state_from_stored
from patronage.streams.resp import (
    HiredisConnection,
    HiredisSSLConnection,
    connection_class_for,
    execute_pipeline,
)
from patronage.streams.settings import Settings
from patronage.streams.types import ApplyResult, DueMove, Fields, Queue

Command = tuple[Any, ...]  # a Redis command's raw arguments, name first
T = TypeVar("T")
# A batch with more customers than this (a catch-up's) is applied in chunks
# of at least this many, each on its own connection, overlapping the
# worker's work with Redis's; a live batch (fewer) goes in one round trip.
APPLY_CHUNK_CUSTOMERS = 500
# ... and in at most this many chunks: connections a worker opens to Redis
# stay few however many customers a batch has.
APPLY_CHUNKS_MAX = 8

log = logging.getLogger(__name__)


_FIELD_LITERAL = re.compile(r"'([a-z0-9_]+)'")
_INCLUDE = re.compile(r"^--!include (\w+)$", re.M)
_PREFIX_LITERAL = re.compile(r"'([a-z]+:)'")


def _stored_prefix_literal(match: re.Match[str]) -> str:
    byte = STORED_PREFIXES.get(match[1])
    return match[0] if byte is None else f"'\\{ord(byte)}'"


def _lua_source(name: str) -> str:
    return resources.files("patronage.streams").joinpath(f"lua/{name}.lua").read_text("utf-8")


def _lua(name: str) -> str:
    """A script as Redis runs it: each quoted profile field name replaced by
    its code, each quoted field prefix by its byte (the scripts are written
    with layout.py's names; the migration's own tables name the old ones)."""
    text = _lua_source(name)
    # Redis runs each script alone: a part two scripts share is pasted in.
    text = _INCLUDE.sub(lambda m: _lua_source(m[1]), text)
    text = _FIELD_LITERAL.sub(lambda m: str(STORED_NAMES.get(m[1], m[0])), text)
    if name != "migrate":
        text = _PREFIX_LITERAL.sub(_stored_prefix_literal, text)
    else:
        # After the first line: a `#!lua` shebang must stay first.
        shebang, rest = text.split("\n", 1)
        text = f"{shebang}\n{lua_stored_names()}{rest}"
    return text


_SETTING = re.compile(r"\$\{(\w+)\}")


def _with_settings(script: str, settings: Mapping[str, int | float]) -> str:
    """`script` with each `${name}` replaced by that setting's value, a Lua
    number literal."""

    def literal(match: re.Match[str]) -> str:
        value = settings[match[1]]
        if isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"setting {match[1]} must be a finite number, got {value!r}")
        # In brackets when negative: after a minus, `-5` would be a comment.
        return f"({value!r})" if value < 0 else repr(value)

    return _SETTING.sub(literal, script)


_APPLY_ENTRY = "local function apply(KEYS, ARGV)"


def apply_as_script(code: str) -> str:
    """The apply library (apply.lua: helpers and an `apply` entry point) as
    a script: the entry point's body run as the script's own, its locals in
    registers (called as a function, the script took 3 % more instructions
    a live call: docs/benchmarks.md)."""
    head, entry, body = code.partition(f"\n{_APPLY_ENTRY}\n")
    body = body.rstrip()
    if not entry or not body.endswith("\nend"):
        raise ValueError(f"the apply script must end with its entry point, {_APPLY_ENTRY!r}")
    return f"{head}\n{body.removesuffix('end')}"


def apply_as_function(code: str) -> tuple[str, str]:
    """(function name, library) for FUNCTION LOAD: the same text, its
    helpers made once when Redis loads it. The name carries a hash of the
    code (settings included), so workers of other versions or settings on
    the same Redis each call their own."""
    name = "patronage_apply_" + hashlib.sha1(code.encode()).hexdigest()[:16]
    shebang, rest = code.split("\n", 1)
    if shebang != "#!lua":
        raise ValueError("the apply script must start with a #!lua line")
    library = f"#!lua name={name}\n{rest}\nredis.register_function('{name}', apply)\n"
    return name, library


def _functions_unavailable(exc: ResponseError) -> bool:
    """FUNCTION LOAD refused because this server has no functions (Redis
    before 7) or the user may not load them (ACL)."""
    return isinstance(exc, NoPermissionError) or "unknown command" in str(exc).lower()


def function_missing(reply: object) -> bool:
    """An FCALL of a function the node does not have (it restarted without
    persistence, its functions were flushed, or it joined the cluster later):
    like NOSCRIPT, nothing ran."""
    return isinstance(reply, ResponseError) and "Function not found" in str(reply)


class Migrated(NamedTuple):
    """What `migrate_layout` moved."""

    profiles: int  # profiles seen
    renamed: int  # fields renamed (to their codes, prefixes to their bytes: layouts 1-6)
    packed: int  # profile hashes packed (layouts 1-3)
    merged: int  # trails merged (layout 2's five keys)
    folded: int  # trails moved into the profile's value (layouts 3-4)
    indexed: int  # members-set entries moved into the due sets (layouts 1-4)
    compacted: int  # trails rewritten in shorter records (layouts 2-5)


class StoredLayoutError(FatalRedisError):
    """The key prefix holds data in a layout this version does not read."""


class ProfileStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        cfg: ProfileConfig,
        retention_ms: int = 0,
        functions: bool = True,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cfg = cfg
        self.retention_ms = retention_ms
        apply_code = _with_settings(_lua("apply"), self._apply_settings())
        self._apply = client.register_script(apply_as_script(apply_code))
        # The apply library as a Redis function (Redis 7): its helpers are
        # made once per server, not on every call. Where FUNCTION LOAD is
        # refused (Redis 6, an ACL without it) the store calls the script:
        # same code, same results (the contract suite runs both).
        self._apply_function, self._apply_library = apply_as_function(apply_code)
        self.functions = functions
        self._watermark = client.register_script(_lua("watermark"))
        self._reschedule = client.register_script(_lua("reschedule"))
        self._park = client.register_script(_lua("park"))
        self._erase = client.register_script(_lua("erase"))
        self._segment = client.register_script(_lua("segment"))
        self._unscore = client.register_script(_lua("unscore"))
        self._sources = client.register_script(_lua("sources"))
        self._risk = client.register_script(_lua("risk"))
        self._migrate = client.register_script(_lua("migrate"))
        self._topic_codes = client.register_script(_lua("topics"))
        self.sources_key = sources_key(prefix)
        self.topics_key = topics_key(prefix)
        # The topics' codes in stored offset fields (read when a profile names
        # one this table lacks, extended when a batch brings a new topic) and
        # each source label of a batch as the apply script gets it.
        self.topics = TopicCodes()
        self._stored_sources: dict[str, str] = {}
        # Batches send EVALSHA alone (resp.execute_pipeline): load the
        # scripts on every primary first (and again after NOSCRIPT, e.g. a
        # node restart: _pipelined).
        self.cluster = type(client).__name__ == "RedisCluster"
        self._scripts_loaded = False
        self._layout_checked = False
        self._nodes: dict[str, aioredis.Redis] = {}

    async def ensure_scripts(self, force: bool = False) -> None:
        if not self._layout_checked:
            await self.check_layout()
        if self._scripts_loaded and not force:
            return
        for script in (
            self._apply,
            self._watermark,
            self._reschedule,
            self._park,
            self._erase,
            self._segment,
            self._unscore,
            self._sources,
            self._risk,
            self._migrate,
            self._topic_codes,
        ):
            await self.client.script_load(script.script)
        if self.functions:
            try:
                await self.client.function_load(self._apply_library, replace=True)
            except ResponseError as exc:
                if not _functions_unavailable(exc):
                    raise  # e.g. the library does not compile: not to be hidden
                # Redis before 7 (unknown command) or an ACL without FUNCTION:
                # the script does the same.
                self.functions = False
                log.warning(
                    "Redis did not load the apply function (%s); applying with EVALSHA "
                    "(same results, ~10%% more Redis time a live call: docs/benchmarks.md)",
                    exc,
                )
        self._scripts_loaded = True

    def _apply_op(self, customer_id: str, args: Sequence[Any]) -> tuple[str, Command]:
        """(routing key, command) applying `args` to one customer."""
        keys = self.keys(customer_id)
        if self.functions:
            return keys.profile, ("FCALL", self._apply_function, len(keys), *keys, *args)
        return keys.profile, _script(self._apply, list(keys), args)

    async def check_layout(self) -> None:
        """Refuse a prefix an earlier version filled with the long field
        names (the scripts would read its profiles as empty and start them
        again); mark a new prefix as written in this layout."""
        found = await self._stored_layout()
        if found is None:
            # Every worker of layout 1 recorded its sources on its first batch.
            if await self.client.exists(self.sources_key):
                raise self._layout_error(1)
            await self.client.set(layout_key(self.prefix), LAYOUT_VERSION, nx=True)
        elif found != LAYOUT_VERSION:
            raise self._layout_error(found)
        self._layout_checked = True

    async def _stored_layout(self) -> int | None:
        found = await self.client.get(layout_key(self.prefix))
        return None if found is None else int(found)

    def _layout_error(self, found: int) -> StoredLayoutError:
        fix = (
            "Stop every worker, then run `patronage store migrate`."
            if found < LAYOUT_VERSION
            else "It was written by a newer version."
        )
        return StoredLayoutError(
            f"the profiles under PATRONAGE_KEY_PREFIX={self.prefix!r} use the stored "
            f"layout {found}{' (long field names)' if found == 1 else ''}; this version "
            f"reads layout {LAYOUT_VERSION}. {fix}"
        )

    async def migrate_layout(self, chunk: int = 500) -> Migrated:
        """Move every stored profile to this layout (each customer in one
        atomic script, the trail folded into the profile's value; safe to
        run again), fold the partitions' members sets into their due sets,
        then mark the prefix. Workers must be stopped: one of an earlier
        version would keep writing the old layout."""
        found = await self._stored_layout()
        if found is not None and found > LAYOUT_VERSION:
            raise self._layout_error(found)
        self._layout_checked = True  # this store is what makes it current
        await self.ensure_scripts(force=True)
        profiles = renamed = packed = merged = folded = compacted = 0
        # Every topic the sources record gets its code up front; one met only
        # in a profile gets it when the script names it, and that chunk runs
        # again (the script moves only what is left).
        await self.load_topic_codes()
        seen = await self.client.hkeys(self.sources_key)
        await self._give_codes(_text(field).partition(":")[0] for field in seen)
        async for batch in _pages(self.customer_ids(), chunk):
            replies = await self._migrate_customers(batch)
            unknown = {_text(topic) for reply in replies for topic in reply[5]}
            if unknown:
                await self._give_codes(unknown)
                replies += await self._migrate_customers(batch)
            for fields, hashes, trails, into_profile, shortened, _ in replies:
                renamed += int(fields)
                packed += int(hashes)
                merged += int(trails)
                folded += int(into_profile)
                compacted += int(shortened)
            profiles += len(batch)
        indexed = await self._fold_members_sets(chunk)
        await self.client.set(layout_key(self.prefix), LAYOUT_VERSION)
        return Migrated(profiles, renamed, packed, merged, folded, indexed, compacted)

    async def _migrate_customers(self, customer_ids: Sequence[str]) -> list[Any]:
        codes = [part for topic, code in self.topics.code_of.items() for part in (topic, code)]
        ops = []
        for customer_id in customer_ids:
            profile = self.profile_key(customer_id)
            trail = layout_4_trail_key(self.prefix, customer_id)
            old = layout_2_trail_keys(self.prefix, customer_id)
            ops.append((profile, _script(self._migrate, [profile, trail, *old], codes)))
        return checked(await self._pipelined(ops))

    async def _fold_members_sets(self, chunk: int) -> int:
        """Layouts 1-4 listed a partition's customers in a members set beside
        its due set: each goes into the due set, parked since the batch that
        last had it unless a judgment is pending (ZADD LT keeps that one).
        Returns the entries moved; a rerun finds no members set left."""
        moved = 0
        pattern = layout_4_members_key(self.prefix, 0).replace("-0}", "-*}")
        async for raw in self.client.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            due = self.due_key(int(key.rsplit("-", 1)[1].rstrip("}")))
            cursor = None
            while cursor != 0:
                cursor, pairs = await self.client.zscan(key, cursor or 0, count=chunk)
                if pairs:
                    parked = {_text(m): PARKED + float(score) for m, score in pairs}  # type: ignore[arg-type]
                    await self.client.zadd(due, parked, lt=True)
                    moved += len(pairs)
            await self.client.delete(key)
        return moved

    async def _pipelined(self, ops: Sequence[tuple[str, Command]]) -> list[Any]:
        """Run ops (routing key, raw command) in one round trip; on a cluster,
        one pipeline per owning node, concurrently (resp.execute_pipeline).

        Replies come back in op order, and a reply may be the exception Redis
        answered for that op: the caller decides by the error policy
        (streams/errors.py) whether that is transient or poison for one
        customer. Every op touches one slot. A MOVED or ASK reply refreshes the
        slot map, so the retry goes to the new owner. A script a node does not
        know (NOSCRIPT: it restarted, or its scripts were flushed), or a
        function it does not have, did not run: the scripts and the function
        are loaded again and those ops alone sent again."""
        if not ops:
            return []
        results = await self._send(ops)
        unknown = [
            i for i, r in enumerate(results) if isinstance(r, NoScriptError) or function_missing(r)
        ]
        if unknown:
            await self.ensure_scripts(force=True)
            again = await self._send([ops[i] for i in unknown])
            for index, reply in zip(unknown, again, strict=True):
                results[index] = reply
        moved = any(isinstance(r, Exception) and needs_slot_refresh(r) for r in results)
        if self.cluster and moved:
            # RedisCluster.initialize() is a no-op once initialised: refresh
            # the slot map through the nodes manager itself.
            await self.client.nodes_manager.initialize()  # type: ignore[attr-defined]
        return results

    async def _send(self, ops: Sequence[tuple[str, Command]]) -> list[Any]:
        if not self.cluster:
            return await execute_pipeline(self.client, [command for _, command in ops])
        groups: dict[str, list[int]] = {}
        for index, (key, _) in enumerate(ops):
            node = self.client.get_node_from_key(key)  # type: ignore[attr-defined]
            groups.setdefault(f"{node.host}:{node.port}", []).append(index)

        async def run(address: str, indexes: list[int]) -> tuple[list[int], list[Any]]:
            commands = [ops[index][1] for index in indexes]
            return indexes, await execute_pipeline(self._node(address), commands)

        done = await asyncio.gather(*(run(a, ix) for a, ix in groups.items()))
        results: list[Any] = [None] * len(ops)
        for indexes, replies in done:
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply
        return results

    def _node(self, address: str) -> aioredis.Redis:
        """A plain client for one cluster node, with the cluster client's
        credentials and TLS settings (ACL user, password, CA)."""
        client = self._nodes.get(address)
        if client is None:
            host, _, port = address.rpartition(":")
            kwargs = getattr(self.client, "connection_kwargs", {})
            tls = issubclass(kwargs.get("connection_class", object), aioredis.SSLConnection)
            connection_class = HiredisSSLConnection if tls else HiredisConnection
            wanted = _NODE_CONNECTION_KWARGS
            if tls:
                wanted = wanted + tuple(k for k in kwargs if k.startswith("ssl_"))
            pool = aioredis.ConnectionPool(
                connection_class=connection_class,
                host=host,
                port=int(port),
                **{k: kwargs[k] for k in wanted if kwargs.get(k) is not None},
            )
            client = aioredis.Redis(connection_pool=pool)
            self._nodes[address] = client
        return client

    def keys(self, customer_id: str) -> CustomerKeys:
        return customer_keys(self.prefix, customer_id)

    def profile_key(self, customer_id: str) -> str:
        return profile_key(self.prefix, customer_id)

    def due_key(self, partition: int) -> str:
        return due_key(self.prefix, partition)

    def clock_key(self, partition: int) -> str:
        return clock_key(self.prefix, partition)

    def _apply_settings(self) -> dict[str, int | float]:
        """The apply script's settings (layout.APPLY_SETTINGS), written into
        the script this store loads."""
        rules = self.cfg.lapse
        fixed = {
            "half_life_ms": self.cfg.half_life_ms,
            "map_cap": self.cfg.map_cap,
            "session_window": self.cfg.session_window,
            "dedupe_window_hours": self.cfg.dedupe_window_ms // HOUR_MS,
            "lapse_min_visits": rules.min_visits,
            "lapse_min_tenure_days": rules.min_tenure_days,
            "lapse_min_gap_days": rules.min_gap_days,
            "lapse_gap_multiplier": rules.gap_multiplier,
            "retention_ms": self.retention_ms,
            "dedupe_max_events": self.cfg.dedupe_max_events,
            "late_kept": self.cfg.late_kept,
            "record_orders": int(self.cfg.record_orders),
        }
        assert set(fixed) == set(APPLY_SETTINGS)
        return fixed

    def _apply_args(self, deltas: Sequence[Delta] | PackedDeltas, clock: float) -> list[Any]:
        # In layout.APPLY_ARGS order.
        if isinstance(deltas, PackedDeltas):
            packed = deltas.packed  # packed where the batch was prepared
        else:
            packed = packed_deltas(deltas, self._stored_sources)
        return [packed, repr(float(clock))]

    async def source_codes(self, labels: Iterable[str]) -> dict[str, str]:
        """Each source label as the apply script gets it, a new topic given
        its code first: for a batch packed where it is prepared."""
        wanted = set(labels)
        await self._code_source_labels(wanted)
        return {label: self._stored_sources[label] for label in wanted}

    async def _code_sources(
        self, by_customer: Mapping[str, Sequence[Delta] | PackedDeltas]
    ) -> None:
        """Each source label of these deltas as stored (a packed customer's
        were coded before it was packed)."""
        await self._code_source_labels(
            {
                d.source
                for deltas in by_customer.values()
                if not isinstance(deltas, PackedDeltas)
                for d in deltas
            }
        )

    async def _code_source_labels(self, labels: set[str]) -> None:
        """These source labels as stored, a new topic given its code first
        (one round trip, only when a batch brings one)."""
        known = self._stored_sources
        new = {label for label in labels if label not in known}
        if not new:
            return
        await self._give_codes({source.partition(":")[0] for source in new})
        for source in new:
            known[source] = self.topics.stored_source(source)

    async def _give_codes(self, topics: Iterable[str]) -> None:
        """Make sure each of these topics has its code (given now if none)."""
        new = sorted(set(topics) - set(self.topics.code_of))
        if new:
            script = _script(self._topic_codes, [self.topics_key], new)
            [codes] = checked(await self._pipelined([(self.topics_key, script)]))
            given = dict(zip(new, map(_text, codes), strict=True))
            self.topics = TopicCodes({**self.topics.code_of, **given})

    async def load_topic_codes(self) -> TopicCodes:
        """Every topic's code as Redis holds it now."""
        stored = _decode(await self.client.hgetall(self.topics_key))
        stored.pop(NEXT_TOPIC_CODE, None)
        self.topics = TopicCodes(stored)
        return self.topics

    async def _with_topics(self, decode: Callable[[], T]) -> T:
        """decode(), after reading the topics' codes again if a profile names
        one this store has not seen (given by another worker since)."""
        try:
            return decode()
        except UnknownTopicCode:
            await self.load_topic_codes()
        try:
            return decode()
        except UnknownTopicCode as exc:
            raise FatalRedisError(
                f"a profile under PATRONAGE_KEY_PREFIX={self.prefix!r} names topic code "
                f"{exc} that {self.topics_key} does not hold: that table was deleted or "
                "changed, or the profile was copied from another prefix"
            ) from exc

    async def apply_batch(
        self,
        by_customer: Mapping[str, Sequence[Delta] | PackedDeltas],
        partition_of: dict[str, int] | None = None,
        clocks: Mapping[int, float] | None = None,
        marks: Mapping[int, Mapping[str, int]] | None = None,
        sources: Mapping[tuple[str, int], SourceState] | None = None,
        wall_ms: int = 0,
    ) -> ApplyResult:
        """Apply every customer's deltas, judge their lapses against their
        partition's event clock (`clocks`), record the batch on the clock marks
        (`marks`: partition -> topic -> newest event time) and the sources, in
        one pipelined round trip (a catch-up's batch: in chunks, see below).

        The due time written is an early bound (the earliest activity of the
        batch: no gap it opens can be decided before the clock passes it),
        written with the update so a crash cannot lose it; the result's
        `lapse_due` pairs each bound with the time the script's own judging
        named, and the pipeline moves the entry there once the batch's alerts
        are out (`store_scores`; a sweep judged it a second time before). ZADD
        LT keeps the earliest bound, so a redelivered batch cannot push a due
        time later, and an entry lowered since is not moved."""
        await self.ensure_scripts()
        if not by_customer:
            return ApplyResult()
        await self._code_sources(by_customer)
        due: dict[int, dict[str, float]] = {}
        parked: dict[int, dict[str, float]] = {}

        def customer_ops(customers: list[str]) -> list[tuple[str, Command]]:
            args = (by_customer, partition_of or {}, clocks or {}, due, parked, wall_ms)
            return self._customer_ops(customers, *args)

        def bookkeeping() -> list[tuple[str, Command]]:
            return self._bookkeeping_ops(due, parked, marks or {}, sources or {}, wall_ms)

        customers = list(by_customer)
        chunks = apply_chunks(customers)
        if len(chunks) == 1:
            # A live batch: everything in one round trip.
            ops = customer_ops(customers)
            replies = await self._pipelined(ops + bookkeeping())
            raise_unless_poison(replies)
            replies = replies[: len(customers)]
            result = await self._with_topics(lambda: _apply_result(customers, replies, self.topics))
        else:
            result, replies = await self._apply_in_chunks(chunks, customer_ops)
            # After every chunk, as it went after every customer in one pipeline.
            raise_unless_poison(await self._pipelined(bookkeeping()))
        _lapse_moves(result, due, dict(zip(customers, replies, strict=True)))
        return result

    def _customer_ops(
        self,
        customers: list[str],
        by_customer: Mapping[str, Sequence[Delta] | PackedDeltas],
        partition_of: Mapping[str, int],
        clocks: Mapping[int, float],
        due: dict[int, dict[str, float]],
        parked: dict[int, dict[str, float]],
        wall_ms: int,
    ) -> list[tuple[str, Command]]:
        """These customers' apply ops; each one's early due bound (or its
        parking) noted in `due` / `parked` by partition."""
        ops: list[tuple[str, Command]] = []
        for customer_id in customers:
            deltas = by_customer[customer_id]
            partition = partition_of.get(customer_id)
            clock = clocks.get(partition, 0.0) if partition is not None else 0.0
            ops.append(self._apply_op(customer_id, self._apply_args(deltas, clock)))
            if partition is None:
                continue
            earliest = first_activity(deltas)
            if earliest is not None:
                due.setdefault(partition, {})[customer_id] = earliest
            else:
                parked.setdefault(partition, {})[customer_id] = PARKED + wall_ms
        return ops

    async def _apply_in_chunks(
        self,
        chunks: list[list[str]],
        customer_ops: Callable[[list[str]], list[tuple[str, Command]]],
    ) -> tuple[ApplyResult, list[Any]]:
        """A catch-up's batch in chunks, each on its own connection: Redis
        runs the first while the worker builds the next, and the worker
        decodes a chunk's profiles while Redis runs the ones after it (one
        pipeline left Redis idle while the worker built and decoded:
        docs/benchmarks.md, "A catch-up's apply in chunks"). The result and
        the customers' replies, in the chunks' order."""

        async def applied(chunk: list[str]) -> tuple[ApplyResult, list[Any]]:
            replies = await self._pipelined(customer_ops(chunk))
            raise_unless_poison(replies)
            decoded = await self._with_topics(lambda: _apply_result(chunk, replies, self.topics))
            return decoded, replies

        # Every chunk finished before a failure is raised: none is left
        # running beside the retry of the batch.
        done = await asyncio.gather(*(applied(c) for c in chunks), return_exceptions=True)
        parts: list[tuple[ApplyResult, list[Any]]] = []
        for part in done:
            if isinstance(part, BaseException):
                raise part
            parts.append(part)
        replies = [reply for _, chunk_replies in parts for reply in chunk_replies]
        return _merged([part for part, _ in parts]), replies

    def _bookkeeping_ops(
        self,
        due: Mapping[int, Mapping[str, float]],
        parked: Mapping[int, Mapping[str, float]],
        marks: Mapping[int, Mapping[str, int]],
        sources: Mapping[tuple[str, int], SourceState],
        wall_ms: int,
    ) -> list[tuple[str, Command]]:
        """After a batch's customers: their lapse due entries and parked
        ones, the event-clock marks, the sources, expired due entries."""
        ops: list[tuple[str, Command]] = []
        for partition, scores in due.items():
            key = self.due_key(partition)
            ops.append((key, _zadd(key, scores, lt=True)))
        for partition, newest in marks.items():
            key = self.clock_key(partition)
            args: list[str | int] = [wall_ms]
            for topic, ts in newest.items():
                args.extend([topic, ts])
            ops.append((key, _script(self._watermark, [key], args)))
        if sources:
            seen: list[str | int] = []
            for (topic, partition), state in sources.items():
                seen.extend([f"{topic}:{partition}", state.epoch, state.max_offset])
            ops.append((self.sources_key, _script(self._sources, [self.sources_key], seen)))
        for partition, scores in parked.items():
            key = self.due_key(partition)
            flat = [p for member, score in scores.items() for p in (member, repr(score))]
            ops.append((key, _script(self._park, [key], [repr(PARKED), *flat])))
        if self.retention_ms > 0:
            # Customers whose profile expired leave with it (parked since
            # before the horizon; a pending one is parked by its sweep first).
            horizon = PARKED + wall_ms - self.retention_ms
            for key in {self.due_key(p) for p in (*due, *parked)}:
                ops.append((key, ("ZREMRANGEBYSCORE", key, repr(PARKED), f"({horizon!r}")))
        return ops

    async def judge(
        self, customers: Mapping[str, float]
    ) -> dict[str, tuple[list[bytes], float | None]]:
        """Judge the lapses of these customers (-> the clock to judge at), with
        no new events: (pending findings, when to judge again) per customer."""
        await self.ensure_scripts()
        ops = [self._apply_op(c, self._apply_args([], clock)) for c, clock in customers.items()]
        replies = checked(await self._pipelined(ops))
        outbox, due = REPLY["outbox"], REPLY["due"]
        return {
            c: (list(r[outbox]), float(r[due]) if r[due] else None)
            for c, r in zip(customers, replies, strict=True)
        }

    async def clock_marks(self, partitions: Sequence[int]) -> dict[int, dict[str, str]]:
        """The event-clock marks of these partitions (one round trip)."""
        ops = [(self.clock_key(p), ("HGETALL", self.clock_key(p))) for p in partitions]
        replies = checked(await self._pipelined(ops))
        return {p: _decode(r) for p, r in zip(partitions, replies, strict=True)}

    async def source_states(
        self, sources: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], SourceState]:
        """What was seen of these topic partitions (epoch, highest offset)."""
        if not sources:
            return {}
        values = await self.client.hmget(self.sources_key, [f"{t}:{p}" for t, p in sources])
        return {
            tp: SourceState.decode(v.decode() if isinstance(v, bytes) else v)
            if v
            else SourceState()
            for tp, v in zip(sources, values, strict=True)
        }

    async def erase(self, customer_id: str, partition: int) -> tuple[int, int | None]:
        """Remove every key of one customer and its entries in the
        partition's due and at-risk sets."""
        await self.ensure_scripts()
        keys = self.keys(customer_id)
        due = self.due_key(partition)
        risk = risk_key(self.prefix, partition)
        removed, _, _ = checked(
            await self._pipelined(
                [
                    (keys.profile, _script(self._erase, list(keys), [])),
                    (due, ("ZREM", due, customer_id)),
                    (risk, ("ZREM", risk, customer_id)),
                ]
            )
        )
        segment = int(removed[1]) if removed[1] else None
        return int(removed[0]), segment

    async def store_scores(
        self,
        writes: Mapping[str, Mapping[str, str | int]],
        risk_due: Mapping[int, Mapping[str, float]] | None = None,
        lapse_due: Mapping[int, Sequence[DueMove]] | None = None,
    ) -> set[str]:
        """Write scoring decisions to the profiles that still exist (an erased
        one is not brought back), schedule at-risk judging (as
        schedule_risk; a batch gave it a round trip of its own, ~5 % of the
        batch's time at 5k events/s) and move lapse entries (as
        reschedule), in one round trip; returns the customers written."""
        await self.ensure_scripts()
        ops: list[tuple[str, Command]] = []
        named = STORED_NAMES.get  # stored_name, inlined: per field of every customer of a pass
        for customer_id, mapping in writes.items():
            key = self.profile_key(customer_id)
            flat = [p for name, value in mapping.items() for p in (named(name, name), value)]
            ops.append((key, _script(self._segment, [key], flat)))
        ops.extend(self._risk_ops(risk_due or {}, keep_earlier=False))
        for partition, moves in (lapse_due or {}).items():
            if moves:
                ops.append(self._reschedule_op(partition, moves, "lapse"))
        replies = checked(await self._pipelined(ops))
        return {cid for cid, reply in zip(writes, replies, strict=False) if int(reply) == 1}

    async def clear_scores(self, customer_ids: Sequence[str]) -> dict[str, int | None]:
        """Drop the scoring fields of these profiles (parts merged into a
        person: the person is scored instead); customer -> the segment it
        had, for those that exist."""
        await self.ensure_scripts()
        scored = sorted(STORED_NAMES[field] for field in SCORED_FIELDS)
        ops: list[tuple[str, Command]] = []
        for customer_id in customer_ids:
            key = self.profile_key(customer_id)
            ops.append((key, _script(self._unscore, [key], scored)))
        replies = checked(await self._pipelined(ops))
        return {
            c: int(segment) if segment is not None else None
            for c, (segment, dropped) in zip(customer_ids, replies, strict=True)
            if segment is not None or int(dropped) > 0
        }

    async def ack_outbox(self, items: dict[str, list[bytes]]) -> None:
        """Drop findings Kafka acknowledged (by value: others may have arrived)."""
        if not items:
            return
        ops: list[tuple[str, Command]] = []
        for customer_id, raw_items in items.items():
            key = self.keys(customer_id).outbox
            for raw in raw_items:
                ops.append((key, ("LREM", key, 1, raw)))
        checked(await self._pipelined(ops))

    def queue_key(self, partition: int, queue: Queue) -> str:
        if queue == "risk":
            return risk_key(self.prefix, partition)
        return self.due_key(partition)

    async def due_customers(
        self, partition: int, now_ms: float, limit: int, queue: Queue = "lapse"
    ) -> list[tuple[str, float]]:
        rows = await self.client.zrangebyscore(
            self.queue_key(partition, queue), "-inf", now_ms, start=0, num=limit, withscores=True
        )
        out: list[tuple[str, float]] = []
        for member, score in rows:  # type: ignore[str-unpack]
            out.append(
                (member.decode() if isinstance(member, bytes) else str(member), float(score))
            )
        return out

    async def reschedule(
        self,
        partition: int,
        moves: Sequence[DueMove],
        queue: Queue = "lapse",
    ) -> None:
        await self.ensure_scripts()
        if moves:
            checked(await self._pipelined([self._reschedule_op(partition, moves, queue)]))

    def _reschedule_op(
        self, partition: int, moves: Sequence[DueMove], queue: Queue
    ) -> tuple[str, Command]:
        # Nothing left to judge: a lapse entry is parked (the set lists the
        # partition's customers), an at-risk one dropped.
        done = "" if queue == "risk" else repr(PARKED + int(time.time() * 1000))
        args: list[str] = []
        for member, seen, new in moves:
            args.extend([member, repr(seen), done if new is None else repr(new)])
        key = self.queue_key(partition, queue)
        return key, _script(self._reschedule, [key], args)

    async def schedule_risk(
        self, moments: Mapping[int, Mapping[str, float]], keep_earlier: bool = False
    ) -> None:
        ops = self._risk_ops(moments, keep_earlier)
        if ops:
            checked(await self._pipelined(ops))

    def _risk_ops(
        self, moments: Mapping[int, Mapping[str, float]], keep_earlier: bool
    ) -> list[tuple[str, Command]]:
        ops: list[tuple[str, Command]] = []
        for partition, by_customer in moments.items():
            key = risk_key(self.prefix, partition)
            if by_customer:
                ops.append((key, _zadd(key, by_customer, lt=keep_earlier)))
        return ops

    async def record_risk(self, judged: Mapping[str, tuple[float | None, float | None]]) -> None:
        await self.ensure_scripts()
        ops: list[tuple[str, Command]] = []
        for customer_id, (decided, alerted) in judged.items():
            keys = self.keys(customer_id)
            args = ["" if v is None else stored_text(v) for v in (decided, alerted)]
            ops.append((keys.profile, _script(self._risk, [keys.profile, keys.risk_orders], args)))
        if ops:
            checked(await self._pipelined(ops))

    async def risk_inputs(self, customer_ids: Sequence[str]) -> dict[str, tuple[Fields, str]]:
        ops: list[tuple[str, Command]] = []
        for customer_id in customer_ids:
            keys = self.keys(customer_id)
            ops.append((keys.profile, ("GET", keys.profile)))
            ops.append((keys.profile, ("GET", keys.risk_orders)))
        replies = checked(await self._pipelined(ops))

        def decoded() -> dict[str, tuple[Fields, str]]:
            out = {}
            for i, customer_id in enumerate(customer_ids):
                fields, orders = replies[2 * i], replies[2 * i + 1]
                if fields:
                    out[customer_id] = (
                        decode_profile(fields, self.topics),
                        (orders or b"").decode(),
                    )
            return out

        return await self._with_topics(decoded)

    async def risk_versions(self, partitions: Sequence[int]) -> dict[int, int]:
        keys = [risk_version_key(self.prefix, p) for p in partitions]
        values = checked(await self._pipelined([(k, ("GET", k)) for k in keys]))
        return {p: int(v or 0) for p, v in zip(partitions, values, strict=True)}

    async def set_risk_version(self, partition: int, version: int) -> None:
        await self.client.set(risk_version_key(self.prefix, partition), version)

    async def profile(self, customer_id: str) -> dict[str, object] | None:
        raw = await self.client.get(self.profile_key(customer_id))
        fields = await self._with_topics(lambda: decode_profile(raw, self.topics))
        if not fields:
            return None
        return profile_view(customer_id, fields)

    async def partition_members(
        self, partition: int, cursor: int, count: int
    ) -> tuple[int, list[str]]:
        """One slice of a partition's customers (ZSCAN of its due set): next
        cursor (0: done), ids."""
        key = self.due_key(partition)
        next_cursor, pairs = await self.client.zscan(key, cursor, count=count)
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in pairs]
        return int(next_cursor), ids

    async def forget_members(self, partition: int, customer_ids: Sequence[str]) -> None:
        """Drop ids whose profile is gone (expired by retention)."""
        if customer_ids:
            await self.client.zrem(self.due_key(partition), *customer_ids)

    async def customer_ids(self, count: int = 1000) -> AsyncIterator[str]:
        """Every customer with a profile (of any layout: the migration uses it)."""
        pattern = f"{self.prefix}:{{*}}:p"
        async for key in self.client.scan_iter(match=pattern, count=count):
            name = key.decode() if isinstance(key, bytes) else key
            yield name[len(self.prefix) + 2 : -3]

    async def fields_of(self, customer_ids: Sequence[str]) -> dict[str, Fields]:
        """The stored fields of these customers (those with a profile)."""
        keys = [self.profile_key(customer_id) for customer_id in customer_ids]
        replies = checked(await self._pipelined([(k, ("GET", k)) for k in keys]))
        return await self._with_topics(
            lambda: {
                cid: decode_profile(raw, self.topics)
                for cid, raw in zip(customer_ids, replies, strict=True)
                if raw
            }
        )

    async def export_fields(self, chunk: int = 500) -> AsyncIterator[tuple[str, Fields]]:
        """Every stored profile's fields, in chunks of one round trip."""
        async for batch in _pages(self.customer_ids(), chunk):
            for item in (await self.fields_of(batch)).items():
                yield item

    async def stored_state(self, customer_id: str) -> dict[str, Any]:
        """Everything stored for one customer, decoded (memory.stored_state is
        the same for the reference; the contract tests compare the two)."""
        return (await self._stored_states([customer_id]))[0]

    async def states_of(self, customer_ids: Sequence[str]) -> dict[str, ProfileState]:
        """The whole stored state of these customers (parts of a person, to
        merge), of those that have a profile: one round trip."""
        stored = await self._stored_states(customer_ids)
        return {
            c: state_from_stored(s)
            for c, s in zip(customer_ids, stored, strict=True)
            if s["profile"]
        }

    async def _stored_states(self, customer_ids: Sequence[str]) -> list[dict[str, Any]]:
        ops: list[tuple[str, Command]] = []
        for customer_id in customer_ids:
            keys = self.keys(customer_id)
            ops += [
                (keys.profile, ("GET", keys.profile)),
                (keys.outbox, ("LRANGE", keys.outbox, 0, -1)),
                (keys.risk_orders, ("GET", keys.risk_orders)),
            ]
        replies = checked(await self._pipelined(ops))
        return await self._with_topics(
            lambda: [
                _decoded_state(replies[i : i + 3], self.topics) for i in range(0, len(replies), 3)
            ]
        )

    # -- identity stitching (models/identity.py, streams/identities.py) --

    async def identity_links(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        keys = [identity_links_key(self.prefix, n) for n in nodes]
        replies = checked(await self._pipelined([(k, ("HGETALL", k)) for k in keys]))
        return {
            node: {_text(k): _text(v) for k, v in reply.items()}
            for node, reply in zip(nodes, replies, strict=True)
        }

    async def persons_of(self, nodes: Sequence[str]) -> dict[str, Person]:
        keys = [person_key(self.prefix, n) for n in nodes]
        replies = checked(await self._pipelined([(k, ("GET", k)) for k in keys]))
        return _persons(nodes, replies)

    async def identity_state(self, nodes: Sequence[str]) -> tuple[int, dict[str, Person]]:
        """Asked once per input batch. A person is written before the
        generation moves on, so the people are read after it: on one server
        in one light pipeline (replies in order; redis-py's command path
        took 1.8 % of a worker's CPU at 1k events/s for the generation
        alone), on a cluster one after the other (its pipelines to
        different nodes run side by side)."""
        key = identity_generation_key(self.prefix)
        if self.cluster:
            # redis-py's own command: it also reads the slot map of a client
            # used for the first time (the light pipeline needs it read).
            generation = int(await self.client.get(key) or 0)
            return generation, (await self.persons_of(nodes) if nodes else {})
        keys = [person_key(self.prefix, n) for n in nodes]
        ops = [(key, ("GET", key)), *((k, ("GET", k)) for k in keys)]
        raw, *replies = checked(await self._pipelined(ops))
        return int(raw or 0), _persons(nodes, replies)

    async def write_identities(
        self, links: Mapping[tuple[str, str], str], persons: Mapping[str, Person | None]
    ) -> None:
        """Each (customer, identifier) pair's latest event under both nodes,
        and each node's person (None: linked to nobody); then a new generation."""
        ops: list[tuple[str, Command]] = []
        for (customer, identifier), raw in links.items():
            for node, other in ((customer, identifier), (identifier, customer)):
                key = identity_links_key(self.prefix, node)
                ops.append((key, ("HSET", key, other, raw)))
        for node, person in persons.items():
            key = person_key(self.prefix, node)
            if person is None:
                ops.append((key, ("DEL", key)))
            else:
                ops.append((key, ("SET", key, person_to_json(person))))
        checked(await self._pipelined(ops))
        if persons:
            await self.client.incr(identity_generation_key(self.prefix))

    async def forget_identities(self, nodes: Sequence[str]) -> int:
        """Erasure: the nodes' links and persons (the other side of each
        pair is dropped from its hash too)."""
        links = await self.identity_links(nodes)
        ops: list[tuple[str, Command]] = []
        for node, others in links.items():
            for other in others:
                key = identity_links_key(self.prefix, other)
                ops.append((key, ("HDEL", key, node)))
            for key in (identity_links_key(self.prefix, node), person_key(self.prefix, node)):
                ops.append((key, ("DEL", key)))
        replies = checked(await self._pipelined(ops))
        if nodes:
            await self.client.incr(identity_generation_key(self.prefix))
        return sum(int(r) for r in replies)

    async def memory_usage(self, customer_id: str) -> int:
        total = 0
        for key in self.keys(customer_id):
            used = await self.client.memory_usage(key)
            total += int(used or 0)
        return total

    async def delete_prefix(self) -> int:
        """Remove every key under this prefix (tests and `patronage store reset`)."""
        removed = 0
        async for page in _pages(self.client.scan_iter(match=f"{self.prefix}:*", count=1000), 1000):
            # One round trip per page (per node on a cluster), one key per command.
            replies = await self._pipelined([(k, ("UNLINK", k)) for k in page])
            removed += sum(int(r) for r in replies if isinstance(r, int))
        return removed


async def _pages(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """Lists of up to `size` items (the last may be shorter; none if empty)."""
    page: list[T] = []
    async for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def _apply_result(customers: list[str], replies: list[Any], topics: TopicCodes) -> ApplyResult:
    """The apply script's replies (the first len(customers) of the batch's)."""
    result = ApplyResult()
    for customer_id, reply in zip(customers, replies, strict=False):
        if isinstance(reply, Exception):
            # Redis refused this customer's update (nothing else of the
            # batch): its records become dead letters.
            result.failed[customer_id] = f"{type(reply).__name__}: {reply}"[:300]
            continue
        result.applied += int(reply[REPLY["applied"]])
        result.duplicate_offsets += int(reply[REPLY["duplicate_offsets"]])
        result.duplicate_events += int(reply[REPLY["duplicate_events"]])
        if reply[REPLY["outbox"]]:
            result.outbox[customer_id] = list(reply[REPLY["outbox"]])
        result.profiles[customer_id] = decode_profile(reply[REPLY["profile"]], topics)
    return result


def apply_chunks(customers: list[str]) -> list[list[str]]:
    """A batch's customers in the chunks it is applied in: one for a live
    batch, else chunks of at least APPLY_CHUNK_CUSTOMERS, at most
    APPLY_CHUNKS_MAX of them, in order."""
    size = max(APPLY_CHUNK_CUSTOMERS, -(-len(customers) // APPLY_CHUNKS_MAX))
    return [customers[i : i + size] for i in range(0, len(customers), size)]


def _merged(results: Sequence[ApplyResult]) -> ApplyResult:
    """One result for a batch applied in chunks (disjoint customers)."""
    merged = ApplyResult()
    for part in results:
        merged.applied += part.applied
        merged.duplicate_offsets += part.duplicate_offsets
        merged.duplicate_events += part.duplicate_events
        merged.outbox.update(part.outbox)
        merged.profiles.update(part.profiles)
        merged.failed.update(part.failed)
    return merged


def _lapse_moves(
    result: ApplyResult, bounds: Mapping[int, Mapping[str, float]], replies: Mapping[str, Any]
) -> None:
    """Each early bound the batch wrote, with when its customer's script says
    to judge again (its reply's `due`; '' is nothing pending)."""
    at = REPLY["due"]
    for partition, scores in bounds.items():
        moves: list[DueMove] = []
        for customer_id, bound in scores.items():
            reply = replies[customer_id]
            if isinstance(reply, Exception):
                continue  # refused: its bound stays for the sweep
            moves.append((customer_id, bound, float(reply[at]) if reply[at] else None))
        if moves:
            result.lapse_due[partition] = moves


def _persons(nodes: Sequence[str], replies: list[Any]) -> dict[str, Person]:
    """node -> its person, from the GET replies of their person keys."""
    return {n: person_from_json(r) for n, r in zip(nodes, replies, strict=True) if r}


def raise_unless_poison(replies: list[Any]) -> None:
    """Raise the first transient or fatal error among pipeline replies."""
    for reply in replies:
        if isinstance(reply, Exception) and classify(reply) != "poison":
            raise reply


def checked(replies: list[Any]) -> list[Any]:
    """The replies, or the first error among them raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _script(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Command:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def _zadd(key: str, scores: Mapping[str, float], lt: bool = False) -> Command:
    """ZADD key [LT] score member ...: LT only lowers a score already there."""
    flat = [part for member, score in scores.items() for part in (score, member)]
    return ("ZADD", key, *(("LT",) if lt else ()), *flat)


def _decoded_state(replies: list[Any], topics: TopicCodes) -> dict[str, Any]:
    raw_profile, outbox, risk = replies
    profile = profile_as_text(decode_profile(raw_profile, topics))
    trail = decode_trail(split_profile(raw_profile)[1])
    day0 = int(float(profile.get("day0", 0)))
    bits = int.from_bytes(trail.bitmap, "big")
    width = len(trail.bitmap) * 8
    return {
        "profile": profile,
        "days": [day0 + pos for pos in range(width) if bits >> (width - 1 - pos) & 1],
        "sessions": trail.sessions,
        "event_ids": [[token, hour] for token, hour in trail.event_ids],
        "order_keys": trail.order_keys,
        "outbox": [json.loads(raw) for raw in outbox],
        "edges": {day: list(trail.edges[day]) for day in sorted(trail.edges)},
        "risk_orders": (risk or b"").decode(),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in fields.items()}


def group_by_customer(pairs: Iterable[tuple[str, Delta]]) -> dict[str, list[Delta]]:
    grouped: dict[str, list[Delta]] = {}
    for customer_id, delta in pairs:
        grouped.setdefault(customer_id, []).append(delta)
    return grouped


_NODE_CONNECTION_KWARGS = (
    "username",
    "password",
    "credential_provider",
    "socket_timeout",
    "socket_connect_timeout",
)


def make_redis(
    url: str,
    password: str | None = None,
    cluster: bool = False,
    ca_file: str | None = None,
    username: str | None = None,
) -> aioredis.Redis:
    """A Redis client; with `cluster`, a Redis Cluster client seeded from `url`;
    a rediss:// URL is TLS, verified against `ca_file` when given; `username`
    is a Redis ACL user (default user when None)."""
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
    if ca_file and url.startswith("rediss"):
        options["ssl_ca_certs"] = ca_file
    if password is not None:
        options["password"] = password
    if username is not None:
        options["username"] = username
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        client: aioredis.Redis = RedisCluster.from_url(url, **options)  # type: ignore[assignment]
        return client
    # The cluster client fixes its connection class (redis-py's Python
    # packer, see resp.py); the batched paths use per-node clients (_node).
    if (connection_class := connection_class_for(url)) is not None:
        options["connection_class"] = connection_class
    return aioredis.Redis.from_url(url, health_check_interval=15, **options)


async def ping_every_master(client: aioredis.Redis, cluster: bool) -> None:
    """PING; on a cluster, every master (a cluster client pings one node only)."""
    if cluster:
        await client.ping(target_nodes="primaries")
    else:
        await client.ping()


def redis_for(settings: Settings) -> aioredis.Redis:
    """The Redis client the settings describe (ACL user, password, cluster, TLS)."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return make_redis(
        settings.redis_url,
        password,
        settings.redis_cluster,
        settings.redis_tls_ca_file,
        settings.redis_username,
    )
