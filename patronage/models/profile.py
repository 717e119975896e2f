"""Profile update math: `apply(state, delta) -> (state, outcome)`.

This is the reference the Redis Lua script (streams/lua/apply.lua) mirrors
field for field; tests hold the two equal. A profile is a function of the set
of events applied, not their order:

* last_seen/first_seen/last_order_at are max/min;
* decayed frequency and monetary value are stored *as of last_seen* (the
  reference time); when last_seen moves forward the sums are rescaled, and a
  late event is decayed from its own ts to the reference;
* visit days are a set, so visits and the gap statistics follow from it.

Counting once: orders and receipts are deduplicated by their natural key
(`order_id`; `store_id` + `receipt_id`) for the life of the profile; other
events by event id within `dedupe_window_ms` of event time before the
customer's newest event, however many events come between (an older, late
event while it is among the customer's last `late_kept` arrivals: a
producer's retry follows its event closely), keeping at most
`dedupe_max_events` ids. Tokens are 48-bit hashes.

Two bounded windows trade exact order-independence for bounded memory; each
is exact unless its window overflows (documented in the README): sessions
(the newest `session_window` sessions) and the capped category/channel/
device/payment maps (the first `map_cap` keys, the rest go to `_other`).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import operator
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, NamedTuple

from mypy_extensions import mypyc_attr

from patronage.models import jsontext
from patronage.models.contracts import (
    BASKET_EVENTS,
    UTC,
    Click,
    CustomerAttributes,
    Event,
    Purchase,
    StoreReceipt,
    format_ts,
)
from patronage.models.lapse import Finding, LapseRules, judge
from patronage.models.layout import (
    ATTRIBUTE_PREFIX,
    DISTINCT_MARK,
    KIND_WIRE,
    MAP_PREFIXES,
    OFFSET_PREFIX,
    OTHER,
    stored_text,
)
from patronage.models.timeunits import DAY_MS, HOUR_MS

EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

DeltaKind = Literal["click", "order", "attributes"]
Outcome = Literal["applied", "dup_offset", "dup_event"]


@mypyc_attr(native_class=False)  # frozen: see patronage/compiled.py
@dataclass(frozen=True)
class ProfileConfig:
    half_life_ms: int = 30 * DAY_MS
    map_cap: int = 32
    session_window: int = 32
    dedupe_window_ms: int = 7 * DAY_MS
    dedupe_max_events: int = 4096
    # Late event ids (older than the dedupe window) kept among the latest arrivals.
    late_kept: int = 32
    lapse: LapseRules = field(default_factory=LapseRules)
    # Keep each order (the risk_orders key) until at-risk judging decided it.
    record_orders: bool = False


# Not frozen: a frozen dataclass sets each of these fields through
# object.__setattr__, which made building one cost 2.5 µs instead of 0.65 µs,
# once per event. Nothing changes a delta once built.
@dataclass(slots=True)
class Delta:
    """One validated event, reduced to what the profile needs (the script's
    input; packed_deltas writes it for the script, layout.DELTA_FORMATS)."""

    source: str  # source topic:partition (with its epoch, models/sources.py)
    offset: int  # Kafka offset in source
    event_token: str  # 12-hex (48-bit) hash of event_id (token())
    ts: int  # event time, epoch ms
    day: int  # visit day index (days since 1970-01-01 in the customer's zone)
    kind: DeltaKind
    session_token: str | None = None  # click: 8-hex hash of session_id
    channel: str | None = None  # marketing channel
    device: str | None = None  # click: device
    origin: Literal["online", "store"] | None = None
    basket: float = 0.0  # basket value (positive lines), base currency
    returned: float = 0.0  # returned value (negative lines, as a positive number)
    net: float = 0.0  # basket - returned
    categories: tuple[tuple[str, float], ...] = ()  # category -> net value
    payment_method: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # attribute name -> JSON value
    # orders: 12-hex (48-bit) hash of the natural key (order_id; store_id + receipt_id),
    # deduplicated for the life of the profile instead of by event id
    order_token: str | None = None

    def __reduce__(self) -> tuple[type[Delta], tuple[object, ...]]:
        # Pickled as its constructor's arguments (batches come back from the
        # prepare process pickled): the default pickles each field's name
        # and restores through __setstate__, 3x slower to load.
        return (Delta, _delta_values(self))


_delta_values = operator.attrgetter(*(f.name for f in dataclasses.fields(Delta)))


def packed_deltas(deltas: Iterable[Delta], source_codes: Mapping[str, str]) -> bytes:
    """The apply script's deltas argument (layout.DELTA_FORMATS), each
    delta's source as `source_codes` stores it."""
    return b"".join([_packed(delta, source_codes[delta.source]) for delta in deltas])


class PackedDeltas(NamedTuple):
    """One customer's deltas of a batch, packed for the apply script where
    the batch was prepared (the prepare process), with what the worker still
    reads of them. A Delta object each cost the worker more to unpickle than
    the packed bytes (docs/benchmarks.md, "The deltas packed in the prepare
    process")."""

    packed: bytes  # packed_deltas(...)
    first_activity: int | None  # first_activity(...)
    first_order: float | None  # first_order(...)


# A customer's deltas in a prepared batch: objects, or packed for Redis.
CustomerDeltas = list[Delta] | PackedDeltas


def packed_customer(deltas: Sequence[Delta], source_codes: Mapping[str, str]) -> PackedDeltas:
    return PackedDeltas(
        packed_deltas(deltas, source_codes), first_activity(deltas), first_order(deltas)
    )


def first_activity(deltas: Sequence[Delta] | PackedDeltas) -> int | None:
    """The earliest time of these deltas' events (attributes are not
    activity): no lapse they open can be judged before it."""
    if isinstance(deltas, PackedDeltas):
        return deltas.first_activity
    times = [d.ts for d in deltas if d.kind != "attributes"]
    return min(times) if times else None


def first_order(deltas: Sequence[Delta] | PackedDeltas) -> float | None:
    """The time of the earliest order with a basket among these deltas."""
    if isinstance(deltas, PackedDeltas):
        return deltas.first_order
    times = [float(d.ts) for d in deltas if d.kind == "order" and d.basket > 0]
    return min(times) if times else None


_NUMBERS = struct.Struct(">ddi")  # offset, ts, day
_ORDER_SUMS = struct.Struct(">ddd")  # basket, returned, net
_CATEGORY_VALUE = struct.Struct(">d")
_KIND_BYTE = {kind: letter.encode("ascii") for kind, letter in KIND_WIRE.items()}


def _packed(delta: Delta, source: str) -> bytes:
    head = _HEADS.get((delta.kind, source))
    if head is None:
        head = _head(delta.kind, source)
    numbers = _NUMBERS.pack(delta.offset, delta.ts, delta.day)
    event = _token_bytes(delta.event_token, 6)
    if delta.kind == "click":
        return b"".join(
            (
                head,
                numbers,
                event,
                _byte_counted(_token_bytes(delta.session_token, 4)),
                _counted_label(delta.channel),
                _counted_label(delta.device),
            )
        )
    if delta.kind == "order":
        parts = [
            head,
            numbers,
            event,
            _byte_counted(_token_bytes(delta.order_token, 6)),
            _byte_counted((delta.origin or "").encode("ascii")),
            _ORDER_SUMS.pack(delta.basket, delta.returned, delta.net),
            _counted_label(delta.payment_method),
            _counted_label(delta.channel),
            len(delta.categories).to_bytes(2, "big"),
        ]
        for category, value in delta.categories:
            parts += (_counted_label(category), _CATEGORY_VALUE.pack(value))
        return b"".join(parts)
    parts = [head, numbers, event, len(delta.attributes).to_bytes(2, "big")]
    for name, json_value in delta.attributes:
        raw = json_value.encode("utf-8")
        parts += (_counted(name), len(raw).to_bytes(4, "big"), raw)
    return b"".join(parts)


# A delta's kind and source, and the labels of a shop (channels, devices,
# categories, payment methods), packed once each: they repeat in every
# batch. Bounded, so a flood of distinct labels stays small.
_HEADS: dict[tuple[str, str], bytes] = {}
_LABELS: dict[str | None, bytes] = {}
_PACKED_KEPT = 16_384


def _head(kind: str, source: str) -> bytes:
    head = _KIND_BYTE[kind] + _byte_counted(source.encode("utf-8"))
    if len(_HEADS) >= _PACKED_KEPT:
        _HEADS.clear()
    _HEADS[(kind, source)] = head
    return head


def _counted_label(text: str | None) -> bytes:
    packed = _LABELS.get(text)
    if packed is None:
        packed = _counted(text)
        if len(_LABELS) >= _PACKED_KEPT:
            _LABELS.clear()
        _LABELS[text] = packed
    return packed


def _token_bytes(token: str | None, size: int) -> bytes:
    """A hex token as its first `size` bytes, as stored (b'' for none)."""
    if token is None:
        return b""
    raw = bytes.fromhex(token[: 2 * size])
    if len(raw) != size:
        raise ValueError(f"a token of {size} bytes expected, got {token!r}")
    return raw


def _byte_counted(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def _counted(text: str | None) -> bytes:
    raw = text.encode("utf-8") if text else b""
    return len(raw).to_bytes(2, "big") + raw


def short_hash(text: str) -> str:
    """32-bit token: sessions only (a collision merges two of one customer's sessions)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()


def token(text: str) -> str:
    """48-bit token for event ids and natural keys (12 hex digits): the first
    6 bytes of a 64-bit BLAKE2b, so `patronage store migrate` shortens a
    stored 64-bit record (layouts up to 5) to the token the same event or
    order gets now. A customer holds a few dozen event ids and their natural
    keys: a new one is taken for a re-send with a chance of about 2^-43 per
    event (32 held of 2^48), and per order n / 2^48 with n orders held."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()[:12]


def natural_key(event: Purchase | StoreReceipt) -> str:
    if isinstance(event, StoreReceipt):
        return order_key(event.store_id, event.receipt_id)
    return order_key(None, event.order_id)


def order_key(store_id: str | None, order_id: str) -> str:
    """A purchase's key is its order id; a till receipt's, its store's and
    its number (tills number receipts per store)."""
    if store_id is not None:
        return f"receipt:{store_id}/{order_id}"
    return f"order:{order_id}"


def day_index(ts_ms: int, zone: dt.tzinfo = UTC) -> int:
    if zone is UTC or str(zone) == "UTC":  # dt.UTC or ZoneInfo("UTC") (the default)
        return int(ts_ms // DAY_MS)  # the same day, without a datetime per event
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=zone).date().toordinal() - EPOCH_ORDINAL


@functools.lru_cache(maxsize=256)
def _decimal_rate(rate: float) -> Decimal | None:
    """A currency's rate to the reporting currency as a Decimal, or None for
    1 (the reporting currency itself: nothing to multiply)."""
    return None if rate == 1 else Decimal(str(rate))


def click_delta(
    event_id: str,
    ts_ms: int,
    src: str,
    offset: int,
    zone: dt.tzinfo,
    session_id: str,
    channel: str | None,
    device: str | None,
) -> Delta:
    """A click's delta, from its fields (`to_delta`, or `validate.sent_click`)."""
    # Positional: the most frequent event, and keywords cost a third more.
    return Delta(
        src,
        offset,
        token(event_id),
        ts_ms,
        day_index(ts_ms, zone),
        "click",
        short_hash(session_id),
        channel,
        device or None,
    )


def to_delta(
    event: Event,
    ts_ms: int,
    src: str,
    offset: int,
    currencies: Mapping[str, float],
    zone: dt.tzinfo = UTC,
) -> Delta:
    if isinstance(event, Click):
        channel = event.channel.value if event.channel else None
        return click_delta(
            event.event_id, ts_ms, src, offset, zone, event.session_id, channel, event.device
        )
    if isinstance(event, BASKET_EVENTS):
        store = isinstance(event, StoreReceipt)
        return order_delta(
            event.event_id,
            ts_ms,
            src,
            offset,
            zone,
            [(i.category or "uncategorized", i.unit_price * i.quantity) for i in event.items],
            currencies[event.currency],
            None if store or not event.channel else event.channel.value,  # type: ignore[union-attr]
            event.payment_method,
            natural_key(event),
            store,
        )
    assert isinstance(event, CustomerAttributes)
    attributes = sorted(event.attributes.items())
    return Delta(  # the rarest kind: by name
        source=src,
        offset=offset,
        event_token=token(event.event_id),
        ts=ts_ms,
        day=day_index(ts_ms, zone),
        kind="attributes",
        attributes=tuple((name, jsontext.dumps_text(v)) for name, v in attributes),
    )


def order_delta(
    event_id: str,
    ts_ms: int,
    src: str,
    offset: int,
    zone: dt.tzinfo,
    lines: Iterable[tuple[str, Decimal]],
    currency_rate: float,
    channel: str | None,
    payment_method: str | None,
    key: str,
    store: bool,
) -> Delta:
    """An order's delta from its lines' categories and values (unit price x
    quantity, in the order's currency; `to_delta`, or
    `validate.sent_order`): summed exactly (Decimal) in the reporting
    currency into basket, returns and each category."""
    rate = _decimal_rate(currency_rate)
    basket = returned = _ZERO
    per_category: dict[str, Decimal] = {}
    for category, value in lines:
        if rate is not None:
            value *= rate
        if value >= 0:
            basket += value
        else:
            returned -= value
        # (from zero, not `value`: 0 * -2 is -0, and a sum from zero is 0)
        per_category[category] = per_category.get(category, _ZERO) + value
    # Positional, as for clicks: a keyword each cost a third more.
    return Delta(
        src,
        offset,
        token(event_id),
        ts_ms,
        day_index(ts_ms, zone),
        "order",
        None,
        channel,
        None,
        "store" if store else "online",
        float(basket),
        float(returned),
        float(basket - returned),
        tuple([(c, float(per_category[c])) for c in sorted(per_category)]),
        payment_method or None,
        (),
        token(key),
    )


_ZERO = Decimal(0)


@dataclass
class ProfileState:
    """The Redis layout, in Python: a hash of fields plus three small side sets."""

    fields: dict[str, float | str] = field(default_factory=dict)
    days: list[int] = field(default_factory=list)  # sorted visit days
    sessions: dict[str, int] = field(default_factory=dict)  # session hash -> first ts
    # (event-id token, event hour) within the dedupe window, in arrival order
    eids: list[tuple[str, int]] = field(default_factory=list)
    order_keys: list[str] = field(default_factory=list)  # natural-key tokens, for life
    outbox: list[Finding] = field(default_factory=list)  # lapse findings not yet sent
    # visit day -> (first, last activity ms), for the days whose gaps the
    # event clock has not yet decided (see lapse.judge)
    edges: dict[int, tuple[int, int]] = field(default_factory=dict)
    # orders not yet judged for at-risk alerts (models/risk.py)
    risk_orders: str = ""

    def copy(self) -> ProfileState:
        return ProfileState(
            dict(self.fields),
            list(self.days),
            dict(self.sessions),
            list(self.eids),
            list(self.order_keys),
            list(self.outbox),
            dict(self.edges),
            self.risk_orders,
        )


def _num(fields: Mapping[str, float | str], name: str) -> float:
    value = fields.get(name)
    return float(value) if value is not None else 0.0


def apply(state: ProfileState, d: Delta, cfg: ProfileConfig) -> tuple[ProfileState, Outcome]:
    """Apply one event; a redelivered or duplicate event changes nothing but its offset."""
    s = state.copy()
    f = s.fields
    offset_field = OFFSET_PREFIX + d.source
    last_offset = f.get(offset_field)
    if last_offset is not None and d.offset <= float(last_offset):
        return state, "dup_offset"
    f[offset_field] = float(d.offset)
    if not _first_time(s, d, cfg):
        return s, "dup_event"
    f["events_applied"] = _num(f, "events_applied") + 1

    if d.kind == "attributes":
        _apply_attributes(f, d)
        return s, "applied"

    _touch(s, d, cfg)
    _add_edge(s, d)
    weight = 2.0 ** (-(_num(f, "last_seen") - d.ts) / cfg.half_life_ms)
    if d.kind == "click":
        f["clicks"] = _num(f, "clicks") + 1
        if d.session_token is not None:
            _add_session(s, d.session_token, d.ts, cfg.session_window)
        if d.channel is not None:
            _inc_capped(f, "ch:", d.channel, 1.0, cfg.map_cap)
        if d.device is not None:
            _inc_capped(f, "dev:", d.device, 1.0, cfg.map_cap)
        return s, "applied"

    origin = d.origin or "online"
    if d.basket > 0:
        f["orders"] = _num(f, "orders") + 1
        f["orders_" + origin] = _num(f, "orders_" + origin) + 1
        f["basket_sum"] = _num(f, "basket_sum") + d.basket
        f["max_basket"] = max(_num(f, "max_basket"), d.basket)
        f["last_order_at"] = max(_num(f, "last_order_at"), float(d.ts))
        first = (_num(f, "first_order_at"), _num(f, "first_order_value"))
        if "first_order_at" not in f or (float(d.ts), d.basket) < first:
            f["first_order_at"] = float(d.ts)
            f["first_order_value"] = d.basket
        f["freq_decayed"] = _num(f, "freq_decayed") + weight
        if cfg.record_orders and ("risk_decided" not in f or d.ts > _num(f, "risk_decided")):
            entry = f"{stored_text(float(d.ts))},{stored_text(d.basket)};"
            s.risk_orders += entry
    f["spend_total"] = _num(f, "spend_total") + d.net
    f["spend_" + origin] = _num(f, "spend_" + origin) + d.net
    f["returns_value"] = _num(f, "returns_value") + d.returned
    f["monetary_decayed"] = _num(f, "monetary_decayed") + weight * d.net
    for category, value in d.categories:
        _inc_capped(f, "cat:", category, value, cfg.map_cap)
    if d.payment_method is not None:
        _inc_capped(f, "pay:", d.payment_method, 1.0, cfg.map_cap)
    if d.channel is not None:
        _inc_capped(f, "ch:", d.channel, 1.0, cfg.map_cap)
    return s, "applied"


def _first_time(s: ProfileState, d: Delta, cfg: ProfileConfig) -> bool:
    """Record the event's identity; False if it was seen before (a re-send).

    An order counts once for life by its natural key. Another event counts
    once within the dedupe window of event time before the newest event seen;
    an id older than that is kept while it is among the last `late_kept`
    arrivals (a producer's retry follows its event closely, however late the
    event); at most `dedupe_max_events` are kept, oldest first out."""
    if d.order_token is not None:
        if d.order_token in s.order_keys:
            return False
        s.order_keys.append(d.order_token)
        return True
    if any(seen == d.event_token for seen, _ in s.eids):
        return False
    hour = d.ts // HOUR_MS
    window_hours = cfg.dedupe_window_ms // HOUR_MS
    newest = max((h for _, h in s.eids), default=hour)
    s.eids.append((d.event_token, hour))
    if hour > newest or hour < newest - window_hours:
        # Keep what is within the window of the newest event, and the last
        # `late_kept` arrivals whatever their time (a retry follows its event).
        horizon = max(newest, hour) - window_hours
        recent = len(s.eids) - cfg.late_kept
        s.eids = [(e, h) for i, (e, h) in enumerate(s.eids) if h >= horizon or i >= recent]
    del s.eids[: max(0, len(s.eids) - cfg.dedupe_max_events)]
    return True


def _touch(s: ProfileState, d: Delta, cfg: ProfileConfig) -> None:
    f = s.fields
    if "last_seen" not in f:
        f["first_seen"] = float(d.ts)
        f["last_seen"] = float(d.ts)
    else:
        reference = _num(f, "last_seen")
        if d.ts > reference:
            scale = 2.0 ** (-(d.ts - reference) / cfg.half_life_ms)
            f["freq_decayed"] = _num(f, "freq_decayed") * scale
            f["monetary_decayed"] = _num(f, "monetary_decayed") * scale
            f["last_seen"] = float(d.ts)
        if d.ts < _num(f, "first_seen"):
            f["first_seen"] = float(d.ts)
    _add_day(s, d.day)


def _add_edge(s: ProfileState, d: Delta) -> None:
    """Keep the first and last activity of each visit day not yet judged; an
    activity on a day already judged is late (beyond the clock's lateness)."""
    judged = s.fields.get("judged_day")
    if judged is not None and d.day < float(judged):
        return
    lo, hi = s.edges.get(d.day, (d.ts, d.ts))
    s.edges[d.day] = (min(lo, d.ts), max(hi, d.ts))


def judge_lapses(state: ProfileState, clock: float, cfg: ProfileConfig) -> float | None:
    """Judge the visit gaps the clock has passed (in place): findings go to
    the outbox, decided days leave `edges`. Returns when to judge again."""
    verdict = judge(state.edges, state.fields, clock, cfg.lapse)
    state.outbox.extend(verdict.findings)
    for day in verdict.decided_days:
        del state.edges[day]
    if verdict.decided_days:
        state.fields["judged_day"] = float(min(state.edges))
    if verdict.lapse_day is None:
        state.fields.pop("lapse_day", None)
    else:
        state.fields["lapse_day"] = float(verdict.lapse_day)
    return verdict.due


def _add_day(s: ProfileState, day: int) -> None:
    f = s.fields
    pos = bisect.bisect_left(s.days, day)
    if pos < len(s.days) and s.days[pos] == day:
        return
    sumsq = _num(f, "gap_sumsq")
    if s.days:
        first, last = s.days[0], s.days[-1]
        if day > last:
            sumsq += (day - last) ** 2
        elif day < first:
            sumsq += (first - day) ** 2
        else:
            prev, nxt = s.days[pos - 1], s.days[pos]
            sumsq += (day - prev) ** 2 + (nxt - day) ** 2 - (nxt - prev) ** 2
    s.days.insert(pos, day)
    f["gap_sumsq"] = sumsq
    f["visits"] = float(len(s.days))
    f["first_day"] = float(s.days[0])
    f["last_day"] = float(s.days[-1])


def _add_session(s: ProfileState, sid: str, t: int, window: int) -> None:
    current = s.sessions.get(sid)
    if current is None:
        s.sessions[sid] = t
        s.fields["sessions"] = _num(s.fields, "sessions") + 1
    elif t < current:
        s.sessions[sid] = t
    while len(s.sessions) > window:
        # Same order as a Redis sorted set: score, then member bytes.
        oldest = min(s.sessions.items(), key=lambda kv: (kv[1], kv[0]))[0]
        del s.sessions[oldest]


def distinct_field(prefix: str) -> str:
    """The count of a capped map's distinct keys: a name no key can reach
    (keys are stored as `prefix + key`; this starts with '#')."""
    return DISTINCT_MARK + prefix


def map_entries(fields: Mapping[str, float | str], prefix: str) -> dict[str, float]:
    """A capped map's keys and values. Profiles written before the count got
    its own name kept it at `prefix + '#'`: that field is the count there."""
    legacy = prefix + "#" if distinct_field(prefix) not in fields else None
    return {
        name[len(prefix) :]: float(value)
        for name, value in fields.items()
        if name.startswith(prefix) and name != legacy
    }


def _inc_capped(f: dict[str, float | str], prefix: str, key: str, by: float, cap: int) -> None:
    name = prefix + key
    counter = distinct_field(prefix)
    if counter not in f and prefix + "#" in f:
        f[counter] = f.pop(prefix + "#")  # the count moves to its own name
    if name not in f and key != OTHER:
        distinct = _num(f, counter)
        if distinct >= cap:
            name = prefix + OTHER
        else:
            f[counter] = distinct + 1
    f[name] = _num(f, name) + by


def _apply_attributes(f: dict[str, float | str], d: Delta) -> None:
    for name, value in d.attributes:
        field_name = ATTRIBUTE_PREFIX + name
        current = f.get(field_name)
        if current is None or _newer(d.ts, value, str(current)):
            f[field_name] = f"{d.ts}|{value}"


def _newer(t: int, value: str, current: str) -> bool:
    cur_t, _, cur_value = current.partition("|")
    # Later ts wins; a tie is broken by the value so the result is order-free.
    return (t, value.encode()) > (int(cur_t), cur_value.encode())


def fold(deltas: list[Delta], cfg: ProfileConfig, clock: float | None = None) -> ProfileState:
    """All deltas applied; with a `clock`, lapses judged against it at the end."""
    state = ProfileState()
    for d in deltas:
        state, _ = apply(state, d, cfg)
    if clock is not None:
        judge_lapses(state, clock, cfg)
    return state


# ---------------------------------------------------------------------------
# The user-facing view: one JSON object per customer, the same whether the
# fields come from Redis (strings) or from ProfileState (numbers).

COUNTERS = (
    "visits",
    "clicks",
    "sessions",
    "orders",
    "orders_online",
    "orders_store",
    "events_applied",
)
AMOUNTS = (
    "spend_total",
    "spend_online",
    "spend_store",
    "returns_value",
    "max_basket",
)


def judged_version(fields: Mapping[str, float | str], floor: int) -> int | None:
    """The newest model version that has judged a scored profile: the one
    that last wrote its scores, or the judged floor if newer. A pass writes
    only the profiles whose segment or RFM scores move (rewriting each to
    record the version was three quarters of its Redis commands and a third
    of its time, docs/benchmarks.md); None for a profile never scored."""
    if "segment" not in fields:
        return None
    return max(int(float(fields.get("segment_version", 0))), floor)


def profile_view(
    customer_id: str, fields: Mapping[str, float | str], judged_floor: int = 0
) -> dict[str, object]:
    """What the API shows; `judged_floor`: models.segments.judged_floor_of
    the re-scoring passes recorded."""

    def num(name: str) -> float:
        return _num(fields, name)

    def when(name: str) -> str | None:
        return format_ts(int(num(name))) if name in fields else None

    def day(name: str) -> str | None:
        if name not in fields:
            return None
        return dt.date.fromordinal(int(num(name)) + EPOCH_ORDINAL).isoformat()

    view: dict[str, object] = {
        "customer_id": customer_id,
        "first_seen": when("first_seen"),
        "last_seen": when("last_seen"),
        "first_order_at": when("first_order_at"),
        "last_order_at": when("last_order_at"),
        "first_visit_day": day("first_day"),
        "last_visit_day": day("last_day"),
    }
    for name in COUNTERS:
        view[name] = int(num(name))
    for name in AMOUNTS:
        view[name] = num(name)
    view["avg_basket"] = num("basket_sum") / num("orders") if num("orders") > 0 else 0.0
    view["frequency_decayed"] = num("freq_decayed")
    view["monetary_decayed"] = num("monetary_decayed")
    view["decay_reference"] = view["last_seen"]
    mean, std = gap_stats(fields)
    view["visit_gap_mean_days"] = mean
    view["visit_gap_std_days"] = std
    maps = {prefix: map_entries(fields, prefix) for prefix in MAP_PREFIXES}
    attributes: dict[str, object] = {}
    for name, value in fields.items():
        if name.startswith("a:"):
            attributes[name[2:]] = json.loads(str(value).partition("|")[2])
    view["categories"] = dict(sorted(maps["cat:"].items()))
    view["channels"] = {k: int(v) for k, v in sorted(maps["ch:"].items())}
    view["devices"] = {k: int(v) for k, v in sorted(maps["dev:"].items())}
    view["payment_methods"] = {k: int(v) for k, v in sorted(maps["pay:"].items())}
    view["attributes"] = dict(sorted(attributes.items()))
    view["segment"] = int(num("segment")) if "segment" in fields else None
    view["segment_since"] = when("segment_since")
    view["segment_model_version"] = judged_version(fields, judged_floor)
    view["rfm"] = (
        {"r": int(num("rfm_r")), "f": int(num("rfm_f")), "m": int(num("rfm_m"))}
        if "rfm_r" in fields
        else None
    )
    view["lapsed_since_last_seen"] = "lapse_day" in fields and _num(fields, "lapse_day") == _num(
        fields, "last_day"
    )
    return view


def gap_stats(fields: Mapping[str, float | str]) -> tuple[float | None, float | None]:
    """Mean and standard deviation of gaps between visit days (None below 2 visits)."""
    visits = _num(fields, "visits")
    if visits < 2:
        return None, None
    gaps = visits - 1
    mean = (_num(fields, "last_day") - _num(fields, "first_day")) / gaps
    variance = max(0.0, _num(fields, "gap_sumsq") / gaps - mean * mean)
    return mean, math.sqrt(variance)
