"""In-memory implementations of the pipeline's I/O (streams/types.py).

`MemoryProfileStore` is the pure reference (models/profile.py) behind the
same interface as the Redis store, so the whole pipeline runs in a unit test
without Redis or Kafka; the contract tier (tests/contract/) holds the Redis
store's stored state equal to this one's. Not for production: no retention,
nothing survives the process.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any

from patronage.models.clock import with_batch
from patronage.models.identity import Person
from patronage.models.lapse import finding_from_json, finding_to_json
from patronage.models.layout import SCORED_FIELDS, stored_text
from patronage.models.predict import FittedParameters
from patronage.models.profile import (
    Delta,
    PackedDeltas,
    ProfileConfig,
    ProfileState,
    apply,
    first_activity,
    judge_lapses,
    profile_view,
)
from patronage.models.risk import after_judging
from patronage.models.segments import FrozenModel, SegmentTrainer, judged_floor_of, read_checkpoint
from patronage.models.sources import SourceState
from patronage.streams.types import ApplyResult, DueMove, Fields, Queue


class MemoryProfileStore:
    def __init__(self, cfg: ProfileConfig) -> None:
        self.cfg = cfg
        self.states: dict[str, ProfileState] = {}
        self.due: dict[int, dict[str, float]] = {}
        self.marks: dict[int, dict[str, str | float]] = {}
        self.sources: dict[tuple[str, int], SourceState] = {}
        self.members: dict[int, set[str]] = {}
        self.risk: dict[int, dict[str, float]] = {}
        self.risk_judged: dict[int, int] = {}
        self.links: dict[str, dict[str, str]] = {}
        self.persons: dict[str, Person] = {}
        self.generation = 0

    async def ensure_scripts(self, force: bool = False) -> None:
        return None

    async def apply_batch(
        self,
        by_customer: Mapping[str, Sequence[Delta] | PackedDeltas],
        partition_of: dict[str, int] | None = None,
        clocks: Mapping[int, float] | None = None,
        marks: Mapping[int, Mapping[str, int]] | None = None,
        sources: Mapping[tuple[str, int], SourceState] | None = None,
        wall_ms: int = 0,
    ) -> ApplyResult:
        result = ApplyResult()
        for customer_id, deltas in by_customer.items():
            if isinstance(deltas, PackedDeltas):
                # source_codes() said None: nothing is packed for this store.
                raise TypeError("the in-memory store applies Delta objects, not packed deltas")
            partition = (partition_of or {}).get(customer_id)
            clock = (clocks or {}).get(partition, 0.0) if partition is not None else 0.0
            state = self.states.get(customer_id, ProfileState())
            for delta in deltas:
                state, outcome = apply(state, delta, self.cfg)
                result.applied += outcome == "applied"
                result.duplicate_offsets += outcome == "dup_offset"
                result.duplicate_events += outcome == "dup_event"
            again = judge_lapses(state, clock, self.cfg)
            if state.fields:
                self.states[customer_id] = state
            if state.outbox:
                result.outbox[customer_id] = _outbox(state)
            result.profiles[customer_id] = self._fields(state)
            bound = first_activity(deltas)
            if partition is not None and bound is not None:
                due = self.due.setdefault(partition, {})
                due[customer_id] = min(due.get(customer_id, float("inf")), bound)
                result.lapse_due.setdefault(partition, []).append((customer_id, bound, again))
            if partition is not None:
                self.members.setdefault(partition, set()).add(customer_id)
        for partition, newest in (marks or {}).items():
            self.marks[partition] = with_batch(self.marks.get(partition, {}), newest, wall_ms)
        for tp, seen in (sources or {}).items():
            current = self.sources.get(tp, SourceState())
            if (seen.epoch, seen.max_offset) > (current.epoch, current.max_offset):
                self.sources[tp] = seen
        return result

    async def source_codes(self, labels: Iterable[str]) -> dict[str, str] | None:
        return None  # deltas stay objects here: nothing to pack

    async def judge(
        self, customers: Mapping[str, float]
    ) -> dict[str, tuple[list[bytes], float | None]]:
        verdicts: dict[str, tuple[list[bytes], float | None]] = {}
        for customer_id, clock in customers.items():
            state = self.states.get(customer_id)
            if state is None:
                verdicts[customer_id] = ([], None)
                continue
            due = judge_lapses(state, clock, self.cfg)
            verdicts[customer_id] = (_outbox(state), due)
        return verdicts

    async def clock_marks(self, partitions: Sequence[int]) -> dict[int, dict[str, str]]:
        return {
            p: {k: stored_text(v) for k, v in self.marks.get(p, {}).items()} for p in partitions
        }

    async def source_states(
        self, sources: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], SourceState]:
        return {tp: self.sources.get(tp, SourceState()) for tp in sources}

    async def erase(self, customer_id: str, partition: int) -> tuple[int, int | None]:
        state = self.states.pop(customer_id, None)
        self.due.get(partition, {}).pop(customer_id, None)
        self.risk.get(partition, {}).pop(customer_id, None)
        self.members.get(partition, set()).discard(customer_id)
        if state is None:
            return 0, None
        # As the Redis store counts keys (layout.CUSTOMER_KEYS): the trail
        # is stored with the profile.
        trail = state.days or state.sessions or state.eids or state.order_keys or state.edges
        held = (state.fields or trail, state.outbox, state.risk_orders)
        segment = state.fields.get("segment")
        return sum(1 for part in held if part), None if segment is None else int(segment)

    async def store_scores(
        self,
        writes: Mapping[str, Mapping[str, str | int]],
        risk_due: Mapping[int, Mapping[str, float]] | None = None,
        lapse_due: Mapping[int, Sequence[DueMove]] | None = None,
    ) -> set[str]:
        self._schedule_risk(risk_due or {}, keep_earlier=False)
        for partition, moves in (lapse_due or {}).items():
            await self.reschedule(partition, moves)
        written = set()
        for customer_id, mapping in writes.items():
            state = self.states.get(customer_id)
            if state is not None:
                state.fields.update({k: str(v) for k, v in mapping.items()})
                written.add(customer_id)
        return written

    async def clear_scores(self, customer_ids: Sequence[str]) -> dict[str, int | None]:
        cleared: dict[str, int | None] = {}
        for customer_id in customer_ids:
            state = self.states.get(customer_id)
            if state is None:
                continue
            segment = state.fields.get("segment")
            removed = [state.fields.pop(name) for name in SCORED_FIELDS if name in state.fields]
            if removed:
                cleared[customer_id] = int(float(segment)) if segment is not None else None
        return cleared

    async def ack_outbox(self, items: dict[str, list[bytes]]) -> None:
        for customer_id, raw_items in items.items():
            state = self.states.get(customer_id)
            for raw in raw_items:
                if state is None:
                    continue
                encoded = [finding_to_json(f).encode() for f in state.outbox]
                if raw in encoded:
                    del state.outbox[encoded.index(raw)]

    def _queue(self, queue: Queue) -> dict[int, dict[str, float]]:
        return self.risk if queue == "risk" else self.due

    async def due_customers(
        self, partition: int, now_ms: float, limit: int, queue: Queue = "lapse"
    ) -> list[tuple[str, float]]:
        schedule = self._queue(queue).get(partition, {})
        entries = sorted(schedule.items(), key=lambda kv: (kv[1], kv[0]))
        return [(c, score) for c, score in entries if score <= now_ms][:limit]

    async def schedule_risk(
        self, moments: Mapping[int, Mapping[str, float]], keep_earlier: bool = False
    ) -> None:
        self._schedule_risk(moments, keep_earlier)

    def _schedule_risk(
        self, moments: Mapping[int, Mapping[str, float]], keep_earlier: bool
    ) -> None:
        for partition, by_customer in moments.items():
            schedule = self.risk.setdefault(partition, {})
            for customer_id, moment in by_customer.items():
                if keep_earlier:
                    moment = min(moment, schedule.get(customer_id, math.inf))
                schedule[customer_id] = moment

    async def record_risk(self, judged: Mapping[str, tuple[float | None, float | None]]) -> None:
        for customer_id, (decided, alerted) in judged.items():
            state = self.states.get(customer_id)
            if state is not None:
                marks, state.risk_orders = after_judging(
                    state.fields, state.risk_orders, decided, alerted
                )
                state.fields.update(marks)

    async def risk_inputs(self, customer_ids: Sequence[str]) -> dict[str, tuple[Fields, str]]:
        return {
            c: (self._fields(self.states[c]), self.states[c].risk_orders)
            for c in customer_ids
            if c in self.states
        }

    async def risk_versions(self, partitions: Sequence[int]) -> dict[int, int]:
        return {p: self.risk_judged.get(p, 0) for p in partitions}

    async def set_risk_version(self, partition: int, version: int) -> None:
        self.risk_judged[partition] = version

    async def reschedule(
        self,
        partition: int,
        moves: Sequence[DueMove],
        queue: Queue = "lapse",
    ) -> None:
        due = self._queue(queue).setdefault(partition, {})
        for member, seen, new in moves:
            if due.get(member) == seen:
                if new is None:
                    del due[member]
                else:
                    due[member] = new

    async def profile(self, customer_id: str) -> dict[str, object] | None:
        state = self.states.get(customer_id)
        return profile_view(customer_id, self._fields(state)) if state else None

    async def partition_members(
        self, partition: int, cursor: int, count: int
    ) -> tuple[int, list[str]]:
        ids = sorted(self.members.get(partition, set()))
        chunk = ids[cursor : cursor + count]
        return (cursor + count if cursor + count < len(ids) else 0), chunk

    async def forget_members(self, partition: int, customer_ids: Sequence[str]) -> None:
        # As in Redis, where the due set lists the members: a pending entry goes too.
        self.members.get(partition, set()).difference_update(customer_ids)
        for customer_id in customer_ids:
            self.due.get(partition, {}).pop(customer_id, None)

    async def customer_ids(self, count: int = 1000) -> AsyncIterator[str]:
        for customer_id in list(self.states):
            yield customer_id

    async def fields_of(self, customer_ids: Sequence[str]) -> dict[str, Fields]:
        return {c: self._fields(self.states[c]) for c in customer_ids if c in self.states}

    async def states_of(self, customer_ids: Sequence[str]) -> dict[str, ProfileState]:
        return {c: self.states[c].copy() for c in customer_ids if c in self.states}

    async def identity_links(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        return {n: dict(self.links.get(n, {})) for n in nodes}

    async def persons_of(self, nodes: Sequence[str]) -> dict[str, Person]:
        return {n: self.persons[n] for n in nodes if n in self.persons}

    async def identity_state(self, nodes: Sequence[str]) -> tuple[int, dict[str, Person]]:
        return self.generation, await self.persons_of(nodes)

    async def write_identities(
        self, links: Mapping[tuple[str, str], str], persons: Mapping[str, Person | None]
    ) -> None:
        for (customer, identifier), raw in links.items():
            self.links.setdefault(customer, {})[identifier] = raw
            self.links.setdefault(identifier, {})[customer] = raw
        for node, person in persons.items():
            if person is None:
                self.persons.pop(node, None)
            else:
                self.persons[node] = person
        self.generation += bool(persons)

    async def forget_identities(self, nodes: Sequence[str]) -> int:
        removed = 0
        for node in nodes:
            for other in self.links.get(node, {}):
                removed += self.links.get(other, {}).pop(node, None) is not None
            removed += self.links.pop(node, None) is not None
            removed += self.persons.pop(node, None) is not None
        self.generation += bool(nodes)
        return removed

    @staticmethod
    def _fields(state: ProfileState) -> Fields:
        return stored_fields(state)


def stored_fields(state: ProfileState) -> Fields:
    """The profile Redis holds for this state, under the fields' full names
    (as ProfileStore reads it back; Redis stores layout.STORED_NAMES)."""
    fields: Fields = dict(state.fields)
    if state.days:
        # The bitmap's bit 0 is a day that is a multiple of 8 (apply.lua).
        fields["day0"] = float(state.days[0] - state.days[0] % 8)
    return fields


def profile_as_text(fields: Mapping[str, float | str]) -> dict[str, str]:
    """A profile's values as text (numbers as layout.stored_text writes them):
    the canonical form both stores' stored_state compare in."""
    return {k: v if isinstance(v, str) else stored_text(v) for k, v in fields.items()}


def stored_state(state: ProfileState) -> dict[str, Any]:
    """Everything the Redis store holds for a customer with this state, in the
    canonical form ProfileStore.stored_state reads it back in."""
    return {
        "profile": profile_as_text(stored_fields(state)),
        "days": list(state.days),
        "sessions": dict(state.sessions),
        "event_ids": [[token, hour] for token, hour in state.eids],
        "order_keys": list(state.order_keys),
        "outbox": [json.loads(finding_to_json(f)) for f in state.outbox],
        "edges": {day: [lo, hi] for day, (lo, hi) in sorted(state.edges.items())},
        "risk_orders": state.risk_orders,
    }


def state_from_stored(stored: Mapping[str, Any]) -> ProfileState:
    """The inverse of `stored_state`: a ProfileState from what a store holds
    (parts of a person are merged from these, models/identity.py)."""
    fields: dict[str, float | str] = {}
    for name, value in stored["profile"].items():
        if name == "day0":
            continue  # the bitmap's origin, not profile state
        try:
            fields[name] = float(value)
        except ValueError:
            fields[name] = value
    return ProfileState(
        fields=fields,
        days=sorted(stored["days"]),
        sessions={k: int(v) for k, v in stored["sessions"].items()},
        eids=[(token, int(hour)) for token, hour in stored["event_ids"]],
        order_keys=list(stored["order_keys"]),
        outbox=[finding_from_json(json.dumps(f)) for f in stored["outbox"]],
        edges={int(day): (int(lo), int(hi)) for day, (lo, hi) in stored["edges"].items()},
        risk_orders=stored["risk_orders"],
    )


def _outbox(state: ProfileState) -> list[bytes]:
    return [finding_to_json(f).encode() for f in state.outbox]


class MemoryModelStore:
    """Promoted models kept as their JSON, as Redis keeps them."""

    def __init__(self) -> None:
        self.version = 0
        self.models: dict[int, str] = {}
        self.trainer: str | None = None
        self.segment_sizes: Counter[int] = Counter()
        self.parameters: str | None = None
        self.passes: dict[int, int] = {}
        self.partitions = 0

    async def current_version(self) -> int:
        return self.version

    async def load(self, version: int) -> FrozenModel | None:
        raw = self.models.get(version)
        return FrozenModel.from_json(json.loads(raw)) if raw else None

    async def promote(self, model: FrozenModel, checkpoint: str) -> None:
        self.models[model.version] = json.dumps(model.to_json())
        self.trainer = checkpoint
        self.version = model.version

    async def save_trainer(self, checkpoint: str) -> None:
        self.trainer = checkpoint

    async def load_trainer(self) -> SegmentTrainer | None:
        return read_checkpoint(self.trainer) if self.trainer else None

    async def sizes(self) -> dict[int, int]:
        return dict(self.segment_sizes)

    async def load_parameters(self) -> FittedParameters | None:
        return FittedParameters.from_json(json.loads(self.parameters)) if self.parameters else None

    async def save_parameters(self, fitted: FittedParameters) -> None:
        self.parameters = json.dumps(fitted.to_json())

    async def adjust_sizes(self, changes: Mapping[int, int]) -> None:
        self.segment_sizes.update(changes)

    async def record_pass(self, partition: int, version: int, partitions: int) -> None:
        self.passes[partition] = version
        self.partitions = partitions

    async def judged_floor(self) -> int:
        return judged_floor_of(self.passes, self.partitions)


class RecordingProducer:
    """A producer that keeps what it is sent, acked at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        self.sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def on(self, topic: str) -> list[dict[str, Any]]:
        """The JSON values sent to a topic, in order."""
        return [json.loads(value) for t, _, value in self.sent if t == topic]


class StaticLog:
    """Input partitions as a test declares them (log end offsets unknown
    unless given)."""

    def __init__(
        self,
        assigned: frozenset[tuple[str, int]] = frozenset(),
        log_ends: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        self.assigned = assigned
        self.log_ends = dict(log_ends or {})

    def assignment(self) -> frozenset[tuple[str, int]]:
        return self.assigned

    def highwater(self, topic: str, partition: int) -> int | None:
        return self.log_ends.get((topic, partition))
