"""One definition of the stored profile: key names, profile fields, the
apply script's KEYS/ARGV/reply layout and the wire codecs of profiles, trails,
deltas and findings.

The Python reference (profile.py, lapse.py), the Redis store (streams/store.py)
and the Lua script (streams/lua/apply.lua) all follow this module;
tests/unit/test_layout.py parses the script and fails if it uses a name or a
position this module does not define (or misses one it does).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple, TypeVar, cast

import msgpack

_V = TypeVar("_V")

# Keys of one customer, in the order the apply script receives them (KEYS[1..]).
# All share the hash tag {customer_id}, so a script never crosses slots.
CUSTOMER_KEYS: dict[str, str] = {
    # string: the fields below, one map (PROFILE_FORMAT), then the trail:
    # what the apply script reads and rewrites besides the fields
    # (TRAIL_HEADER): visit days, sessions, dedupe window, unjudged days,
    # natural keys
    "profile": "p",
    "outbox": "x",  # list: lapse findings not yet acknowledged by Kafka
    # string: orders not yet judged for at-risk, "<ms>,<value>;" each; gone
    # once judged (normally right after the next sweep)
    "risk_orders": "r",
}
# Layout 2 kept the trail's parts under keys of their own; only `patronage
# store migrate` still names them.
LAYOUT_2_TRAIL_KEYS: dict[str, str] = {
    "days": "d",  # string: visit-day bitmap
    "sessions": "s",  # zset: session token -> first ts
    "event_ids": "e",  # string: 12-byte dedupe records
    "order_keys": "k",  # string: 8-byte natural-key tokens
    "edges": "v",  # hash: visit day not yet judged -> "first ms:last ms"
}


class CustomerKeys(NamedTuple):
    profile: str
    outbox: str
    risk_orders: str


def _customer_base(prefix: str, customer_id: str) -> str:
    return f"{prefix}:{{{customer_id}}}:"


def customer_keys(prefix: str, customer_id: str) -> CustomerKeys:
    base = _customer_base(prefix, customer_id)
    return CustomerKeys(*(base + suffix for suffix in CUSTOMER_KEYS.values()))


def layout_4_trail_key(prefix: str, customer_id: str) -> str:
    """The key layouts 3 and 4 kept the trail under, beside the profile."""
    return _customer_base(prefix, customer_id) + "t"


def layout_2_trail_keys(prefix: str, customer_id: str) -> list[str]:
    """The keys layout 2 kept the trail's parts in (LAYOUT_2_TRAIL_KEYS order)."""
    base = _customer_base(prefix, customer_id)
    return [base + suffix for suffix in LAYOUT_2_TRAIL_KEYS.values()]


def profile_key(prefix: str, customer_id: str) -> str:
    """customer_keys(...).profile, without building the others (reads and
    scoring writes name only this one, for every customer of a pass)."""
    return _customer_base(prefix, customer_id) + CUSTOMER_KEYS["profile"]


def due_key(prefix: str, partition: int) -> str:
    """zset: every customer of a partition -> when to judge its lapses again
    (event ms), or, with nothing pending, PARKED + the wall ms of the last
    batch that had it (re-scoring reads the partition's customers here;
    retention trims the parked ones)."""
    return f"{prefix}:{{lapse-{partition}}}:due"


# A parked customer's score starts here: far past any event time (2**50 ms is
# the year 37,600), so the sweep never reaches it, and PARKED + a wall ms is
# still an exact double. One set per partition instead of a due set beside a
# set of members saves an entry (~115 B) per customer and a ZADD per batch.
PARKED = float(2**50)


def risk_key(prefix: str, partition: int) -> str:
    """zset: buyer -> when their p_alive falls below the at-risk threshold
    (models/risk.py); beside the lapse due set, partition-sharded alike."""
    return f"{prefix}:{{lapse-{partition}}}:risk"


def risk_version_key(prefix: str, partition: int) -> str:
    """string: the prediction parameters version the partition's at-risk
    moments and tiers were last judged with (a refit re-judges them)."""
    return f"{prefix}:{{lapse-{partition}}}:riskv"


def clock_key(prefix: str, partition: int) -> str:
    """hash: event-clock marks of a partition (models/clock.py)."""
    return f"{prefix}:{{lapse-{partition}}}:clock"


def layout_4_members_key(prefix: str, partition: int) -> str:
    """zset layouts 1-4 kept beside the due set: the customers of a partition
    -> when a batch last had them (only `patronage store migrate` names it)."""
    return f"{prefix}:{{members-{partition}}}"


def predict_key(prefix: str) -> str:
    """string: the fitted prediction parameters (JSON, versioned)."""
    return f"{prefix}:{{predict}}:params"


def identity_links_key(prefix: str, node: str) -> str:
    """hash: the other node of each (customer, identifier) pair this node is
    in -> the pair's latest link or unlink (JSON); models/identity.py."""
    return f"{prefix}:{{{node}}}:il"


def person_key(prefix: str, node: str) -> str:
    """string: the person a linked node belongs to (JSON: canonical id,
    member keys); absent for a node linked to nobody."""
    return f"{prefix}:{{{node}}}:pe"


def identity_generation_key(prefix: str) -> str:
    """string: counts changes of people, so a cache of persons knows when
    to forget (one GET per batch)."""
    return f"{prefix}:{{identity}}:gen"


def sources_key(prefix: str) -> str:
    """hash: topic:partition -> epoch:highest offset seen (models/sources.py)."""
    return f"{prefix}:{{sources}}"


def topics_key(prefix: str) -> str:
    """hash: topic -> its code in stored offset fields (TopicCodes), and
    NEXT_TOPIC_CODE -> the next code to give."""
    return f"{prefix}:{{topics}}"


NEXT_TOPIC_CODE = "#next"  # (no Kafka topic name can hold a '#')


class UnknownTopicCode(LookupError):
    """A stored offset field names a topic code this table does not hold
    (another worker gave it since the table was read)."""


class TopicCodes:
    """The codes that stand for topics in stored offset fields (layout 7):
    "o:store-receipts:3" is stored as "\x01" "2:3", a byte and a code of a
    digit or two instead of the topic's name in every profile it touched
    (~30 B per profile with this repository's topic names; shop topics such
    as "prod.retail.store-receipts.v2" cost more). Codes are given once per
    key prefix, in order of first sight, and never change (topics_key)."""

    def __init__(self, code_of: Mapping[str, str] | None = None) -> None:
        self.code_of: dict[str, str] = dict(code_of or {})
        self.topic_of: dict[str, str] = {code: topic for topic, code in self.code_of.items()}
        # stored key -> field name, for decode_profile (the same few dozen
        # keys recur in every profile: translating each anew took 12 µs of
        # a 20 µs decode)
        self.names: dict[StoredName, str] = dict(FIELD_OF_STORED)

    def stored_source(self, source: str) -> str:
        """A source label ("topic:partition[#e<epoch>]") with its topic coded."""
        topic, colon, rest = source.partition(":")
        return self.code_of[topic] + colon + rest

    def source(self, stored: str) -> str:
        code, colon, rest = stored.partition(":")
        topic = self.topic_of.get(code)
        if topic is None:
            raise UnknownTopicCode(code)
        return topic + colon + rest


def stored_text(value: float | str) -> str:
    """A field value as Redis holds it: numbers in the apply script's format
    (the shortest of %.15g and %.17g that reads back exactly)."""
    if isinstance(value, str):
        return value
    short = f"{value:.15g}"
    return short if float(short) == value else f"{value:.17g}"


# Written by scoring (streams/segmenting.py, streams/predicting.py): derived
# from the profile and a model, so never merged or compared as event data.
SCORED_FIELDS: frozenset[str] = frozenset(
    {
        "segment",
        "segment_since",
        "segment_version",
        "rfm_r",
        "rfm_f",
        "rfm_m",
        "value_tier",
        "tier_version",
    }
)
# Profile hash fields with a fixed name. The README documents their meaning.
FIELDS: frozenset[str] = (
    frozenset(
        {
            # activity
            "first_seen",
            "last_seen",
            "events_applied",
            "clicks",
            "sessions",
            # visit days (the bitmap holds the set; these summarise it)
            "day0",
            "first_day",
            "last_day",
            "visits",
            "gap_sumsq",
            # orders and money (base currency)
            "orders",
            "orders_online",
            "orders_store",
            "basket_sum",
            "max_basket",
            "last_order_at",
            # the earliest order (by time, then value): the start of the
            # purchase history the predictions (models/predict.py) read
            "first_order_at",
            "first_order_value",
            "spend_total",
            "spend_online",
            "spend_store",
            "returns_value",
            # decayed sums, as of last_seen
            "freq_decayed",
            "monetary_decayed",
            # lapse judging
            "judged_day",
            "lapse_day",
            # at-risk judging (models/risk.py): the start of the first episode not
            # yet decided (orders up to it are judged), the newest episode alerted
            "risk_decided",
            "risk_episode",
        }
    )
    | SCORED_FIELDS
)
# Each fixed field's key in Redis: a one-byte MessagePack integer instead of
# a name (two letters until layout 6: a byte less for the string header and
# one for the second letter, ~55 B of a ~500 B map). Codes start at 64 so
# that no map of them alone is ever a run 1..n, which Redis's cmsgpack would
# pack as an array; 100-127 are left for new fields (still one byte). The
# scripts are written with the names above and loaded with each quoted one
# replaced by its code (store._lua); store.py translates what it reads and
# writes. Everything else, the API included, uses the names above. A code is
# a wire format: never change or reuse one (LAYOUT_VERSION, `patronage store
# migrate`).
StoredName = int | str  # a fixed field's code, or a prefixed field's name
STORED_NAMES: dict[str, int] = {
    "first_seen": 64,
    "last_seen": 65,
    "events_applied": 66,
    "clicks": 67,
    "sessions": 68,
    "day0": 69,
    "first_day": 70,
    "last_day": 71,
    "visits": 72,
    "gap_sumsq": 73,
    "orders": 74,
    "orders_online": 75,
    "orders_store": 76,
    "basket_sum": 77,
    "max_basket": 78,
    "last_order_at": 79,
    "first_order_at": 80,
    "first_order_value": 81,
    "spend_total": 82,
    "spend_online": 83,
    "spend_store": 84,
    "returns_value": 85,
    "freq_decayed": 86,
    "monetary_decayed": 87,
    "judged_day": 88,
    "lapse_day": 89,
    "risk_decided": 90,
    "risk_episode": 91,
    "segment": 92,
    "segment_since": 93,
    "segment_version": 94,
    "rfm_r": 95,
    "rfm_f": 96,
    "rfm_m": 97,
    "value_tier": 98,
    "tier_version": 99,
}
# The two-letter names layouts 2-5 stored the fields under: only `patronage
# store migrate` still reads them.
LAYOUT_5_NAMES: dict[str, str] = {
    "first_seen": "fs",
    "last_seen": "ls",
    "events_applied": "ev",
    "clicks": "cl",
    "sessions": "se",
    "day0": "d0",
    "first_day": "fd",
    "last_day": "ld",
    "visits": "vi",
    "gap_sumsq": "gq",
    "orders": "or",
    "orders_online": "oo",
    "orders_store": "os",
    "basket_sum": "bs",
    "max_basket": "mb",
    "last_order_at": "lo",
    "first_order_at": "fo",
    "first_order_value": "fv",
    "spend_total": "mt",
    "spend_online": "mo",
    "spend_store": "ms",
    "returns_value": "rv",
    "freq_decayed": "fq",
    "monetary_decayed": "md",
    "judged_day": "jd",
    "lapse_day": "la",
    "risk_decided": "rd",
    "risk_episode": "re",
    "segment": "sg",
    "segment_since": "sn",
    "segment_version": "sv",
    "rfm_r": "rr",
    "rfm_f": "rf",
    "rfm_m": "rm",
    "value_tier": "vt",
    "tier_version": "tv",
}
# (keyed by StoredName: a map read from Redis mixes codes and prefixed names)
FIELD_OF_STORED: dict[StoredName, str] = {code: name for name, code in STORED_NAMES.items()}
# Version of the stored layout, kept under layout_key(prefix): 7 = prefixed
# fields behind one-byte prefixes (STORED_PREFIXES), offset fields' topics
# coded (TopicCodes), attribute times in base 36; 6 = fixed
# fields under one-byte codes, the trail in shorter records (48-bit event
# and natural-key tokens, 3-byte hours, 6-byte ms) and a 13-byte header
# (TRAIL_FORMAT); 5 = the trail
# after the profile's map in one value, and a partition's customers in its
# due set (no members set); 4 = the profile as one packed map; 3 = the trail
# (one value for five keys) beside a profile hash; 2 = that hash under the
# two-letter names of LAYOUT_5_NAMES (1, unmarked, spelled them out).
LAYOUT_VERSION = 7

# The profile value: a MessagePack map, stored name -> number (integers as
# integers, others as doubles: exact) or text (attributes, the value tier),
# as Redis's cmsgpack writes it; the scripts keep numbers as numbers, so
# none is parsed or formatted per call (docs/benchmarks.md). The trail
# follows the map in the same value (one key per customer instead of two
# saves a key's overhead, ~75 B); a script reads the map with
# cmsgpack.unpack_one and writes back what follows it unchanged.
PROFILE_FORMAT = "msgpack"


def split_profile(raw: bytes | str | None) -> tuple[dict[StoredName, float | str], bytes]:
    """A stored profile value: its fields under their stored names ({} if
    none) and the trail after them (b"" if none)."""
    if not raw:
        return {}, b""
    stored: dict[StoredName, float | str]
    try:
        # the apply script's reply: the map alone
        stored, trail = msgpack.unpackb(raw, strict_map_key=False), b""
    except msgpack.ExtraData as value:
        stored, trail = value.unpacked, bytes(value.extra)
    # cmsgpack packs an empty table as an empty array
    return (stored or {}), trail


_UNCODED = TopicCodes()  # decode_profile without a table: offsets as coded


def decode_profile(
    raw: bytes | str | None, topics: TopicCodes | None = None
) -> dict[str, float | str]:
    """A stored profile's fields under their full names ({} if none); each
    offset field under its topic's name by `topics` (None: as coded; raises
    UnknownTopicCode for a code it does not hold)."""
    stored, _ = split_profile(raw)
    names = (topics or _UNCODED).names
    fields: dict[str, float | str] = {}
    for key, value in stored.items():
        name = names.get(key)
        if name is None:
            name = _name_of_stored(key, topics, names)
        if value.__class__ is str and name.startswith(ATTRIBUTE_PREFIX):
            value = attribute_of_stored(value)
        fields[name] = value
    return fields


def _name_of_stored(
    key: StoredName, topics: TopicCodes | None, names: dict[StoredName, str]
) -> str:
    if isinstance(key, str) and key.startswith(STORED_PREFIXES[OFFSET_PREFIX]):
        name = OFFSET_PREFIX + (topics.source(key[1:]) if topics else key[1:])
    else:
        # (an unknown code only as its number: only a newer layout writes
        # one, and check_layout refuses those)
        name = field_name(key)
    if len(names) < _NAMES_KEPT:  # map keys are shops' labels: bounded
        names[key] = name
    return name


_NAMES_KEPT = 100_000


def encode_profile(
    fields: Mapping[str, float | str], trail: bytes = b"", topics: TopicCodes | None = None
) -> bytes:
    """A profile's fields (full names) and its trail as the stored value
    (offset fields' topics coded by `topics`; None: left as named)."""
    return bytes(msgpack.packb(under_stored_names(fields, topics))) + trail


# The trail value: a format byte (TRAIL_FORMAT), four 3-byte big-endian
# lengths (visit-day bitmap, sessions, dedupe window, unjudged days), those
# four parts, then the natural keys to the end. Layout 5's trail began with
# a 4-byte length, i.e. a zero byte: `patronage store migrate` tells the two
# apart by that byte alone.
TRAIL_FORMAT = 6
TRAIL_LENGTH_BYTES = 3
TRAIL_HEADER_BYTES = 1 + 4 * TRAIL_LENGTH_BYTES
# bitmap: bit 0 (the MSB of the first byte) is day `day0`
SESSION_TOKEN_BYTES = 4  # then the session's first ms, 6 bytes
SESSION_MS_BYTES = 6  # ms up to 2**48: the year 10,889
EVENT_TOKEN_BYTES = 6  # then the event hour, 3 bytes
EVENT_HOUR_BYTES = 3  # hours up to 2**24: the year 3,884
EDGE_DAY = ">i"  # a visit day not yet judged, then its first and last ms, 6 bytes each
EDGE_MS_BYTES = 6
ORDER_KEY_BYTES = 6  # a natural key's token


class Trail(NamedTuple):
    bitmap: bytes
    sessions: dict[str, int]  # token (hex) -> first ms
    event_ids: list[tuple[str, int]]  # token (hex), event hour; arrival order
    edges: dict[int, tuple[int, int]]  # day -> (first ms, last ms)
    order_keys: list[str]  # natural-key tokens (hex), arrival order


def _split_records(raw: bytes, head: int, tail: int) -> list[tuple[bytes, int]]:
    """Records of `head` raw bytes then a `tail`-byte big-endian number."""
    size = head + tail
    return [
        (raw[i : i + head], int.from_bytes(raw[i + head : i + size], "big"))
        for i in range(0, len(raw), size)
    ]


def _split_edges(raw: bytes) -> dict[int, tuple[int, int]]:
    """Unjudged-day records: day -> (its first ms, its last ms)."""
    size = 4 + 2 * EDGE_MS_BYTES
    edges = {}
    for i in range(0, len(raw), size):
        first, last = i + 4, i + 4 + EDGE_MS_BYTES
        edges[struct.unpack_from(EDGE_DAY, raw, i)[0]] = (
            int.from_bytes(raw[first:last], "big"),
            int.from_bytes(raw[last : i + size], "big"),
        )
    return edges


def decode_trail(raw: bytes | None) -> Trail:
    if not raw:
        return Trail(b"", {}, [], {}, [])
    if raw[0] != TRAIL_FORMAT:
        raise ValueError(f"not a layout-{TRAIL_FORMAT} trail (format byte {raw[0]})")
    parts, at = [], TRAIL_HEADER_BYTES
    for i in range(1, TRAIL_HEADER_BYTES, TRAIL_LENGTH_BYTES):
        length = int.from_bytes(raw[i : i + TRAIL_LENGTH_BYTES], "big")
        parts.append(raw[at : at + length])
        at += length
    bitmap, sessions, events, edges = parts
    orders = raw[at:]
    return Trail(
        bitmap,
        {t.hex(): ms for t, ms in _split_records(sessions, SESSION_TOKEN_BYTES, SESSION_MS_BYTES)},
        [
            (t.hex(), hour)
            for t, hour in _split_records(events, EVENT_TOKEN_BYTES, EVENT_HOUR_BYTES)
        ],
        _split_edges(edges),
        [orders[i : i + ORDER_KEY_BYTES].hex() for i in range(0, len(orders), ORDER_KEY_BYTES)],
    )


def encode_trail(trail: Trail) -> bytes:
    """The value the apply script would store (sessions and event ids in the
    given order, unjudged days by day)."""
    sessions = b"".join(
        bytes.fromhex(t) + int(ms).to_bytes(SESSION_MS_BYTES, "big")
        for t, ms in trail.sessions.items()
    )
    events = b"".join(
        bytes.fromhex(t) + hour.to_bytes(EVENT_HOUR_BYTES, "big") for t, hour in trail.event_ids
    )
    edges = b"".join(
        struct.pack(EDGE_DAY, day)
        + b"".join(int(ms).to_bytes(EDGE_MS_BYTES, "big") for ms in trail.edges[day])
        for day in sorted(trail.edges)
    )
    orders = b"".join(bytes.fromhex(k) for k in trail.order_keys)
    lengths = (len(trail.bitmap), len(sessions), len(events), len(edges))
    header = bytes([TRAIL_FORMAT]) + b"".join(
        n.to_bytes(TRAIL_LENGTH_BYTES, "big") for n in lengths
    )
    return header + trail.bitmap + sessions + events + edges + orders


def stored_name(field: str) -> StoredName:
    """A profile field's key in Redis: a fixed field's code, a prefixed
    field's name behind its one-byte prefix (STORED_PREFIXES)."""
    code = STORED_NAMES.get(field)
    if code is not None:
        return code
    mark, bare = (DISTINCT_MARK, field[1:]) if field.startswith(DISTINCT_MARK) else ("", field)
    head, colon, rest = bare.partition(":")
    stored = STORED_PREFIXES.get(head + colon)
    return field if stored is None else mark + stored + rest


def field_name(stored: StoredName) -> str:
    """The field a key read from Redis stands for."""
    if isinstance(stored, int):
        return FIELD_OF_STORED.get(stored, str(stored))
    mark, bare = (DISTINCT_MARK, stored[1:]) if stored.startswith(DISTINCT_MARK) else ("", stored)
    prefix = PREFIX_OF_STORED.get(bare[:1])
    return stored if prefix is None else mark + prefix + bare[1:]


def stored_attribute(value: str) -> str:
    """An attribute's "<ts ms>|<JSON>" as stored: the time in base 36 (8
    digits until 2059 instead of 13)."""
    ts, bar, rest = value.partition("|")
    try:
        return _base36(int(ts)) + bar + rest
    except ValueError:
        return value


def attribute_of_stored(value: str) -> str:
    """A stored attribute value as "<ts ms>|<JSON>" again."""
    ts, bar, rest = value.partition("|")
    try:
        return f"{int(ts, 36)}{bar}{rest}"
    except ValueError:
        return value


def _base36(number: int) -> str:
    if number < 0:
        return "-" + _base36(-number)
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _BASE36_DIGITS[digit] + digits
        if not number:
            return digits


_BASE36_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def under_stored_names(
    fields: Mapping[str, _V], topics: TopicCodes | None = None
) -> dict[StoredName, _V]:
    """A profile's fields as Redis holds them (for writing a whole map)."""
    stored: dict[StoredName, _V] = {}
    for name, value in fields.items():
        if name.startswith(ATTRIBUTE_PREFIX) and isinstance(value, str):
            value = cast(_V, stored_attribute(value))
        elif topics and name.startswith(OFFSET_PREFIX):
            name = OFFSET_PREFIX + topics.stored_source(name[len(OFFSET_PREFIX) :])
        stored[stored_name(name)] = value
    return stored


def lua_stored_names() -> str:
    """Lua tables for the migration script: CODE (a fixed field's long name,
    and its layout 2-5 two-letter name -> its code) and STORED_PREFIX (a
    prefix as layouts 1-6 wrote it -> its byte)."""
    # ['or'] = ...: a two-letter name may be a Lua keyword
    old = {short: STORED_NAMES[name] for name, short in LAYOUT_5_NAMES.items()}
    pairs = ", ".join(
        f"['{name}'] = {code}" for name, code in sorted({**STORED_NAMES, **old}.items())
    )
    prefixes = ", ".join(
        f"['{prefix}'] = '\\{ord(byte)}'" for prefix, byte in STORED_PREFIXES.items()
    )
    return f"local CODE = {{{pairs}}}\nlocal STORED_PREFIX = {{{prefixes}}}\n"


def layout_key(prefix: str) -> str:
    """string: the stored layout's version (LAYOUT_VERSION)."""
    return f"{prefix}:{{layout}}"


ORIGINS = ("online", "store")
# Fields named by a prefix and a key.
OFFSET_PREFIX = "o:"  # o:<topic>:<partition>[#e<epoch>] -> highest offset applied
ATTRIBUTE_PREFIX = "a:"  # a:<name> -> "<ts ms>|<JSON value>"
MAP_PREFIXES = ("cat:", "ch:", "dev:", "pay:")  # capped maps: key -> sum or count
DISTINCT_MARK = "#"  # "#cat:" etc.: how many distinct keys a capped map holds
OTHER = "_other"  # the key of everything past a capped map's cap
# How Redis holds a prefixed field (layout 7): its prefix as one control
# byte, e.g. "\x03home" for "cat:home", "#\x03" for "#cat:" (a byte instead
# of up to four in every key: ~70 B of a ~790 B value). Like a code, a
# wire format: never change or reuse one. The scripts are written with the
# prefixes above and loaded with each quoted one replaced (store._lua);
# offset fields hold their topic's code (TopicCodes), attribute values their
# time in base 36 (stored_attribute).
STORED_PREFIXES: dict[str, str] = {
    OFFSET_PREFIX: "\x01",
    ATTRIBUTE_PREFIX: "\x02",
    "cat:": "\x03",
    "ch:": "\x04",
    "dev:": "\x05",
    "pay:": "\x06",
}
PREFIX_OF_STORED: dict[str, str] = {byte: prefix for prefix, byte in STORED_PREFIXES.items()}


def is_profile_field(name: str) -> bool:
    """Whether a hash field name is one this module defines."""
    if name in FIELDS:
        return True
    if name.startswith((OFFSET_PREFIX, ATTRIBUTE_PREFIX)):
        return True
    bare = name.removeprefix(DISTINCT_MARK)
    return any(bare.startswith(prefix) for prefix in MAP_PREFIXES)


# The apply script's settings: written into its text when a store loads it
# (`${name}` in the script), so each store's script is its own.
APPLY_SETTINGS = (
    "half_life_ms",
    "map_cap",
    "session_window",
    "dedupe_window_hours",
    "lapse_min_visits",
    "lapse_min_tenure_days",
    "lapse_min_gap_days",
    "lapse_gap_multiplier",
    "retention_ms",  # 0 = keys never expire
    "dedupe_max_events",
    "late_kept",  # late event ids kept among the latest arrivals
    "record_orders",  # 1: keep orders for at-risk judging (the risk_orders key)
)
# The apply script's arguments per call, in ARGV order.
APPLY_ARGS = (
    "deltas",  # packed records, DELTA_FORMATS below
    "clock",  # epoch ms to judge lapses against, after the deltas
)
# ... and its reply, in order.
APPLY_REPLY = (
    "applied",
    "duplicate_offsets",
    "duplicate_events",
    "outbox",  # pending findings (JSON, FINDING_WIRE)
    "profile",  # the profile after the update, the stored value (PROFILE_FORMAT)
    "due",  # when judging again can decide more ('' = nothing pending)
)
REPLY = {name: index for index, name in enumerate(APPLY_REPLY)}

# The apply script's deltas argument: one record per delta, back to back,
# read in place with Lua's struct library (no JSON parse, no table per
# delta). Formats in its notation, big-endian: `Bc0` is a string after its
# 1-byte length, `Hc0` after a 2-byte one; an empty optional string is
# absent. The script reads the head, then by kind: an order's natural key,
# the rest of the record. profile.packed_deltas writes them.
DELTA_FORMATS: dict[str, str] = {
    "head": ">c1Bc0ddi4c6",  # kind letter, source, offset, ts, day, event token (6 bytes)
    "natural key": ">Bc0",  # order: natural-key token (6 bytes; empty: none)
    "click": ">Bc0Hc0Hc0",  # session token (4 bytes; empty: none), channel, device
    # origin, basket, returned, net, payment method, channel, category count
    "order": ">Bc0dddHc0Hc0H",
    "category": ">Hc0d",  # name, net value
    "attributes": ">H",  # attribute count
    "attribute": ">Hc0I4c0",  # name, JSON value
}
# Delta kind -> its letter in a record's head.
KIND_WIRE = {"click": "c", "order": "o", "attributes": "a"}

# Finding attribute -> its name in the outbox JSON the script writes.
FINDING_WIRE: dict[str, str] = {
    "kind": "k",
    "episode": "e",
    "ts": "ts",
    "usual_gap_days": "g",
    "spend_total": "s",
    "span_days": "sp",
    "segment": "seg",
}
