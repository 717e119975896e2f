"""One customer across identifiers: the merge of partial profiles.

Every identifier (a customer id, an anonymous cookie, a loyalty card) keeps
the profile of its own events; a person's canonical profile is the merge of
their identifiers' profiles. Undoing a wrong link is then recomputing the
merge without the identifier that was unlinked — its part was never changed.

`merge` is commutative and associative, `ProfileState()` is its identity, and
the merge of the profiles of disjoint event sets is the profile of all the
events (tests/unit/test_identity.py) — exactly while the bounded windows hold
(the capped maps, the session window, the dedupe window): counts and sums add,
first/last times take the minimum/maximum, visit days are united and the
cadence recomputed from them, decayed sums are re-referenced to the merged
last activity, the latest attribute wins, dedupe state is united. Past a cap
the merge keeps the largest keys (the fold keeps the first arrivals): a
deterministic choice, where the fold's depends on arrival order anyway.

Scoring state (segment, RFM, value tier) is not merged: the canonical
profile is scored again. Lapse and at-risk judging restart from the later
of the parts' judged marks, so history one part already judged is not
alerted again for the person.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Literal, get_args

from patronage.models.contracts import IdentifierKind
from patronage.models.lapse import Finding
from patronage.models.layout import ATTRIBUTE_PREFIX, MAP_PREFIXES, OFFSET_PREFIX, OTHER
from patronage.models.profile import (
    ProfileConfig,
    ProfileState,
    day_index,
    distinct_field,
    map_entries,
)

SUMS = (
    "events_applied",
    "clicks",
    "orders",
    "orders_online",
    "orders_store",
    "basket_sum",
    "spend_total",
    "spend_online",
    "spend_store",
    "returns_value",
)
MAXIMA = ("max_basket", "last_order_at")
DECAYED = ("freq_decayed", "monetary_decayed")
# Judged marks: the later one holds for the person.
MARKS = ("judged_day", "risk_decided", "risk_episode")


def _num(fields: Mapping[str, float | str], name: str) -> float:
    return float(fields[name]) if name in fields else 0.0


def merge(a: ProfileState, b: ProfileState, cfg: ProfileConfig) -> ProfileState:
    """The profile of the events of both parts (see the module docstring)."""
    fa, fb = a.fields, b.fields
    out: dict[str, float | str] = {}
    for name in SUMS:
        if name in fa or name in fb:
            out[name] = _num(fa, name) + _num(fb, name)
    for name in MAXIMA:
        if name in fa or name in fb:
            out[name] = max(float(f[name]) for f in (fa, fb) if name in f)
    _merge_activity(fa, fb, out, cfg)
    _merge_first_order(fa, fb, out)
    for name in {*fa, *fb}:
        if name.startswith(OFFSET_PREFIX):
            out[name] = max(float(f[name]) for f in (fa, fb) if name in f)
        elif name.startswith(ATTRIBUTE_PREFIX):
            out[name] = max((str(f[name]) for f in (fa, fb) if name in f), key=_attribute_order)
    for prefix in MAP_PREFIXES:
        _merge_map(fa, fb, out, prefix, cfg.map_cap)
    for name in MARKS:
        if name in fa or name in fb:
            out[name] = max(float(f[name]) for f in (fa, fb) if name in f)

    merged = ProfileState(fields=out)
    merged.days = sorted({*a.days, *b.days})
    _visit_fields(merged)
    merged.sessions = _merge_sessions(a, b, cfg.session_window, out)
    known = set(a.order_keys)
    merged.order_keys = a.order_keys + [k for k in b.order_keys if k not in known]
    merged.eids = _merge_eids(a, b, cfg)
    merged.outbox = a.outbox + [f for f in b.outbox if f not in a.outbox]
    judged = out.get("judged_day")
    for source in (a.edges, b.edges):
        for day, (lo, hi) in source.items():
            if judged is not None and day < float(judged):
                continue
            low, high = merged.edges.get(day, (lo, hi))
            merged.edges[day] = (min(low, lo), max(high, hi))
    lapse = [float(f["lapse_day"]) for f in (fa, fb) if "lapse_day" in f]
    if lapse and (judged is None or max(lapse) >= float(judged)):
        out["lapse_day"] = max(lapse)
    decided = float(out.get("risk_decided", -math.inf))
    entries = [e for text in (a.risk_orders, b.risk_orders) for e in text.split(";") if e]
    kept = [e for e in entries if float(e.partition(",")[0]) > decided]
    merged.risk_orders = "".join(f"{e};" for e in sorted(kept, key=_order_entry_key))
    return merged


def merge_all(parts: Iterable[ProfileState], cfg: ProfileConfig) -> ProfileState:
    """The canonical profile of a person: the merge of their identifiers' parts."""
    return reduce(lambda x, y: merge(x, y, cfg), parts, ProfileState())


def _merge_activity(
    fa: Mapping[str, float | str],
    fb: Mapping[str, float | str],
    out: dict[str, float | str],
    cfg: ProfileConfig,
) -> None:
    seen = [f for f in (fa, fb) if "last_seen" in f]
    if not seen:
        return
    out["first_seen"] = min(float(f["first_seen"]) for f in seen)
    last = max(float(f["last_seen"]) for f in seen)
    out["last_seen"] = last
    for name in DECAYED:
        # Each part's sum is referenced to its own last activity.
        total = 0.0
        for f in seen:
            total += _num(f, name) * 2.0 ** (-(last - float(f["last_seen"])) / cfg.half_life_ms)
        if any(name in f for f in seen):
            out[name] = total


def _merge_first_order(
    fa: Mapping[str, float | str], fb: Mapping[str, float | str], out: dict[str, float | str]
) -> None:
    firsts = [
        (float(f["first_order_at"]), _num(f, "first_order_value"))
        for f in (fa, fb)
        if "first_order_at" in f
    ]
    if firsts:
        out["first_order_at"], out["first_order_value"] = min(firsts)


def _attribute_order(stored: str) -> tuple[int, bytes]:
    # The profile's own rule: the later ts wins, a tie goes to the larger value.
    ts, _, value = stored.partition("|")
    return int(ts), value.encode()


def _merge_map(
    fa: Mapping[str, float | str],
    fb: Mapping[str, float | str],
    out: dict[str, float | str],
    prefix: str,
    cap: int,
) -> None:
    total: dict[str, float] = {}
    for f in (fa, fb):
        for key, value in map_entries(f, prefix).items():
            total[key] = total.get(key, 0.0) + value
    other = total.pop(OTHER, None)
    keys = sorted(total, key=lambda k: (-total[k], k))
    for key in keys[cap:]:
        other = (other or 0.0) + total.pop(key)
    for key, value in total.items():
        out[prefix + key] = value
    if total or distinct_field(prefix) in fa or distinct_field(prefix) in fb:
        out[distinct_field(prefix)] = float(len(total))
    if other is not None:
        out[prefix + OTHER] = other


def _visit_fields(state: ProfileState) -> None:
    days, f = state.days, state.fields
    if not days:
        return
    f["visits"] = float(len(days))
    f["first_day"] = float(days[0])
    f["last_day"] = float(days[-1])
    f["gap_sumsq"] = float(sum((y - x) ** 2 for x, y in itertools.pairwise(days)))


def _merge_sessions(
    a: ProfileState, b: ProfileState, window: int, out: dict[str, float | str]
) -> dict[str, int]:
    sessions = dict(a.sessions)
    for sid, first in b.sessions.items():
        sessions[sid] = min(first, sessions.get(sid, first))
    # A session seen under both identifiers (a login mid-visit) counts once.
    shared = len(a.sessions.keys() & b.sessions.keys())
    if "sessions" in a.fields or "sessions" in b.fields:
        out["sessions"] = _num(a.fields, "sessions") + _num(b.fields, "sessions") - shared
    newest = sorted(sessions.items(), key=lambda kv: (kv[1], kv[0]))[-window:]
    return dict(newest)


def _merge_eids(a: ProfileState, b: ProfileState, cfg: ProfileConfig) -> list[tuple[str, int]]:
    hours: dict[str, int] = {}
    for token, hour in [*a.eids, *b.eids]:
        hours[token] = max(hour, hours.get(token, hour))
    ordered = sorted(hours.items(), key=lambda kv: (kv[1], kv[0]))
    return ordered[-cfg.dedupe_max_events :]


def _order_entry_key(entry: str) -> tuple[float, float]:
    ts, _, value = entry.partition(",")
    return float(ts), float(value)


# ---------------------------------------------------------------------------
# Resolution: which identifiers and customer ids are one person.

Node = tuple[str, str]  # ("customer_id", id) or (identifier kind, value)
IDENTIFIER_KINDS = frozenset(get_args(IdentifierKind))


@dataclass(frozen=True)
class LinkEvent:
    """A link or unlink (contracts.IdentityEvent), reduced to what resolution needs."""

    type: Literal["link", "unlink"]
    customer_id: str
    identifier: Node
    ts: int
    event_id: str

    @property
    def pair(self) -> tuple[str, Node]:
        return self.customer_id, self.identifier

    def order(self) -> tuple[int, int, str]:
        # Latest wins; at the same ts an unlink wins (undoing is the safe side).
        return self.ts, 1 if self.type == "unlink" else 0, self.event_id


@dataclass(frozen=True)
class Limits:
    identifiers_per_customer: int = 20
    # 1: a second customer claiming an identifier is refused, never merged
    customers_per_identifier: int = 1


@dataclass
class IdentityGraph:
    """Links between customer ids and identifiers, and the people they make.

    Each (customer, identifier) pair keeps its latest link or unlink (by ts,
    unlink first on a tie, then event id): the result is the same whatever
    order the events arrive in and however often. A link is in force unless
    the limits refuse it: links in force are taken oldest first, and one that
    would give an identifier more customers, or a customer more identifiers,
    than the limits allow is refused (a shared tablet or a store's guest card
    must not merge thousands of people). A person is a connected group of
    customer ids and identifiers; its canonical id is its smallest customer id.
    """

    limits: Limits = field(default_factory=Limits)
    latest: dict[tuple[str, Node], LinkEvent] = field(default_factory=dict)

    def apply(self, event: LinkEvent) -> bool:
        """Record an event; False if it changes nothing (a duplicate or older
        than what the pair already holds)."""
        held = self.latest.get(event.pair)
        if held is not None and held.order() >= event.order():
            return False
        self.latest[event.pair] = event
        return True

    def in_force(self) -> tuple[list[LinkEvent], dict[str, str]]:
        """The links in force, and event id -> why each other link is refused."""
        links = sorted((e for e in self.latest.values() if e.type == "link"), key=LinkEvent.order)
        customers: dict[Node, int] = {}
        identifiers: dict[str, int] = {}
        kept, refused = [], {}
        for link in links:
            if customers.get(link.identifier, 0) >= self.limits.customers_per_identifier:
                refused[link.event_id] = (
                    f"{link.identifier[0]} is already linked to "
                    f"{self.limits.customers_per_identifier} customers (the limit): a "
                    "shared device or card"
                )
            elif identifiers.get(link.customer_id, 0) >= self.limits.identifiers_per_customer:
                refused[link.event_id] = (
                    f"the customer already has {self.limits.identifiers_per_customer} "
                    "identifiers (the limit)"
                )
            else:
                customers[link.identifier] = customers.get(link.identifier, 0) + 1
                identifiers[link.customer_id] = identifiers.get(link.customer_id, 0) + 1
                kept.append(link)
        return kept, refused

    def people(self) -> dict[Node, str]:
        """Every linked node -> its person's canonical customer id."""
        parent: dict[Node, Node] = {}

        def root(node: Node) -> Node:
            parent.setdefault(node, node)
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for link in self.in_force()[0]:
            a, b = root(("customer_id", link.customer_id)), root(link.identifier)
            if a != b:
                parent[max(a, b)] = min(a, b)
        groups: dict[Node, list[Node]] = {}
        for node in parent:
            groups.setdefault(root(node), []).append(node)
        out = {}
        for members in groups.values():
            canonical = min(v for kind, v in members if kind == "customer_id")
            out.update(dict.fromkeys(members, canonical))
        return out

    def resolve(self, node: Node) -> str:
        """The canonical customer id an event with this identifier belongs to;
        an identifier linked to nobody is a profile of its own."""
        person = self.people().get(node)
        if person is not None:
            return person
        kind, value = node
        return value if kind == "customer_id" else f"{kind}:{value}"


# ---------------------------------------------------------------------------
# Nodes as stored keys, and what a change of the graph changes for people.


def node_key(node: Node) -> str:
    """A node as it is keyed beside profiles: a customer id as it is, an
    identifier as "<kind>:<value>" (the key of its own profile when events
    carry it alone; customer ids may not take that shape, contracts.py)."""
    kind, value = node
    return value if kind == "customer_id" else f"{kind}:{value}"


def node_of(key: str) -> Node:
    kind, sep, value = key.partition(":")
    if sep and kind in IDENTIFIER_KINDS:
        return kind, value
    return "customer_id", key


@dataclass(frozen=True)
class Person:
    """A connected group of linked nodes: its canonical customer id and the
    keys of its members (their parts are the profiles merged)."""

    canonical: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class PersonChange:
    """A person whose members changed: merged with others (`merge`) or left
    by some (`split`, also for a node left on its own)."""

    person: Person
    kind: Literal["merge", "split"]
    previous: tuple[str, ...]  # the canonical ids its members had before


def persons(people: Mapping[Node, str]) -> dict[str, Person]:
    """Every linked node's key -> its person (IdentityGraph.people())."""
    members: dict[str, list[str]] = {}
    for node, canonical in people.items():
        members.setdefault(canonical, []).append(node_key(node))
    groups = {c: Person(c, tuple(sorted(m))) for c, m in members.items()}
    return {node_key(node): groups[c] for node, c in people.items()}


def person_changes(
    before: Mapping[str, Person], after: Mapping[str, Person], keys: Iterable[str]
) -> list[PersonChange]:
    """The people (among those of `keys`) whose members differ after a
    graph change; a node linked to nobody is a person of its own."""

    def of(table: Mapping[str, Person], key: str) -> Person:
        return table.get(key) or Person(key, (key,))

    changes: dict[str, PersonChange] = {}
    for key in keys:
        now = of(after, key)
        if now.canonical in changes or set(now.members) == set(of(before, key).members):
            continue
        previous = tuple(sorted({of(before, m).canonical for m in now.members}))
        # Members from more than one person: a merge (even if some also left).
        kind: Literal["merge", "split"] = "merge" if len(previous) > 1 else "split"
        changes[now.canonical] = PersonChange(now, kind, previous)
    return sorted(changes.values(), key=lambda c: c.person.canonical)


def person_to_json(person: Person) -> str:
    return json.dumps({"canonical": person.canonical, "members": list(person.members)})


def person_from_json(raw: str | bytes) -> Person:
    doc = json.loads(raw)
    return Person(str(doc["canonical"]), tuple(doc["members"]))


def link_to_json(event: LinkEvent) -> str:
    """A pair's latest event as stored under both its nodes."""
    kind, value = event.identifier
    return json.dumps(
        {
            "type": event.type,
            "customer_id": event.customer_id,
            "kind": kind,
            "value": value,
            "ts": event.ts,
            "event_id": event.event_id,
        },
        separators=(",", ":"),
    )


def link_from_json(raw: str | bytes) -> LinkEvent:
    doc = json.loads(raw)
    return LinkEvent(
        doc["type"],
        doc["customer_id"],
        (doc["kind"], doc["value"]),
        int(doc["ts"]),
        doc["event_id"],
    )


def holds_for_person(finding: Finding, person_days: Sequence[int], zone: dt.tzinfo) -> bool:
    """Whether a part's lapse finding holds for its whole person.

    Lapses are judged per part (an identifier's own visits). A web part's
    "lapsed" is wrong for a person who shopped in store meanwhile: it holds
    only if none of the person's visit days falls after the episode's last
    visit and up to the lapse moment; a "reactivated" only if the person was
    away until the return."""
    start = day_index(finding.episode, zone)
    end = day_index(finding.ts, zone) + (1 if finding.kind == "lapsed" else 0)
    # any person day d with start < d < end?
    first_after = bisect.bisect_right(person_days, start)
    return first_after >= len(person_days) or person_days[first_after] >= end
