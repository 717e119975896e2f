"""The apply script and the Python reference use exactly the names and
positions models/layout.py defines.

The script is parsed, not run (the contract tier runs it): a field renamed on
one side only, an ARGV slot inserted in Python but not in Lua, a finding key
spelled differently — each fails here, in `make unit`, without Redis.
"""

from __future__ import annotations

import hashlib
import re
import struct
from importlib import resources

import msgpack
import pytest

from patronage.models import layout
from patronage.models.lapse import Finding, finding_from_json, finding_to_json
from patronage.models.layout import (
    APPLY_ARGS,
    APPLY_REPLY,
    APPLY_SETTINGS,
    CUSTOMER_KEYS,
    DELTA_FORMATS,
    FINDING_WIRE,
    KIND_WIRE,
    is_profile_field,
)
from patronage.models.profile import (
    Delta,
    ProfileConfig,
    fold,
    judge_lapses,
    packed_deltas,
    short_hash,
    token,
)
from patronage.models.timeunits import DAY_MS
from patronage.streams.store import _with_settings

SCRIPT = resources.files("patronage.streams").joinpath("lua/apply.lua").read_text("utf-8")
CODE = "\n".join(line.split("--", 1)[0] for line in SCRIPT.splitlines())


def declared(table: str) -> dict[int, str]:
    """Slot -> registry name, from `[local] x = ...TABLE[n]...  -- name` lines."""
    pattern = rf"^\s*(?:local )?\w+ = .*\b{table}\[(\d+)\].*--\s*(\w+)\s*$"
    return {int(n): name for n, name in re.findall(pattern, SCRIPT, re.M)}


@pytest.mark.parametrize(("table", "names"), [("KEYS", CUSTOMER_KEYS), ("ARGV", APPLY_ARGS)])
def test_script_reads_every_slot_in_registry_order(table: str, names: object) -> None:
    expected = {i + 1: name for i, name in enumerate(names)}  # type: ignore[arg-type]
    assert declared(table) == expected
    # ... and reads them nowhere else (no positional use past the header).
    used = {int(n) for n in re.findall(rf"\b{table}\[(\d+)\]", CODE)}
    assert used == set(expected)
    assert len(re.findall(rf"\b{table}\[", CODE)) == len(expected)


def test_script_uses_every_setting_and_the_store_fills_them_in() -> None:
    placeholders = re.findall(r"\$\{(\w+)\}", CODE)
    assert set(placeholders) == set(APPLY_SETTINGS)
    settings = {name: i + 1 for i, name in enumerate(APPLY_SETTINGS)}
    settings["lapse_gap_multiplier"] = 1.5
    settings["dedupe_max_events"] = -4
    filled = _with_settings(SCRIPT, settings)
    assert "${" not in filled
    # at the places they are used, not as locals the closures capture
    assert "math.max(7, 1.5 * gap)" in filled
    assert "if distinct >= 2 then" in filled
    assert "string.sub(eids, -(-4) * EREC)" in filled


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), True])
def test_a_setting_that_is_no_finite_number_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="setting lapse_gap_multiplier must be a finite number"):
        _with_settings("local g = ${lapse_gap_multiplier}", {"lapse_gap_multiplier": bad})  # type: ignore[dict-item]


def test_script_field_names_are_registry_fields() -> None:
    literals = re.findall(r"(?:put|num)\('([^']*)'(\s*\.\.)?", CODE)
    literals += re.findall(r"\bh\['([^']*)'\](\s*\.\.)?", CODE)
    assert len(literals) > 30
    for name, concatenated in literals:
        if concatenated:
            # 'orders_' .. origin: every origin must make a registry field.
            assert all(name + origin in layout.FIELDS for origin in layout.ORIGINS), name
        else:
            assert is_profile_field(name), name
    prefixes = set(re.findall(r"'([^']+)'\s*\.\.\s*(?:source|attribute)\b", CODE))
    assert prefixes == {layout.OFFSET_PREFIX, layout.ATTRIBUTE_PREFIX}
    maps = set(re.findall(r"inc_capped\('([^']+)'", CODE))
    assert maps == set(layout.MAP_PREFIXES)
    assert f"'{layout.DISTINCT_MARK}' .. prefix" in CODE
    assert f"prefix .. '{layout.OTHER}'" in CODE


def test_script_reads_the_deltas_in_the_registered_formats() -> None:
    reads = re.findall(
        r"struct\.unpack\('([^']+)', deltas, at\)(?:\s*end)?\s*--\s*(\w+(?: \w+)?)\s*$",
        SCRIPT,
        re.M,
    )
    assert {name: fmt for fmt, name in reads} == DELTA_FORMATS
    assert len(reads) == len(DELTA_FORMATS)  # each read once
    assert len(re.findall(r"struct\.unpack\([^)]*deltas", CODE)) == len(DELTA_FORMATS)


def read_lua_struct(fmt: str, data: bytes, at: int) -> tuple[list[object], int]:
    """Lua's struct.unpack for the notation DELTA_FORMATS uses (big-endian;
    c<n> fixed bytes; c0 sized by the integer before it, which is not returned)."""
    assert fmt[0] == ">"
    values: list[object] = []
    for code, size in re.findall(r"([cBHIid])(\d*)", fmt[1:]):
        if code == "c" and size == "0":
            length = values.pop()
            assert isinstance(length, int)
            values.append(data[at : at + length])
            at += length
        elif code == "c":
            values.append(data[at : at + int(size)])
            at += int(size)
        else:
            spec = {"B": "B", "H": "H", "I": "I", "i": "i", "d": "d"}[code]
            (value,) = struct.unpack_from(">" + spec, data, at)
            values.append(value)
            at += struct.calcsize(">" + spec)
    assert at <= len(data), "read past the end"
    return values, at


def read_deltas(data: bytes) -> list[list[object]]:
    """The records as the script reads them, in DELTA_FORMATS, values in order."""
    records, at = [], 0
    while at < len(data):
        record, at = read_lua_struct(DELTA_FORMATS["head"], data, at)
        kind = record[0]
        if kind == b"o":
            nk, at = read_lua_struct(DELTA_FORMATS["natural key"], data, at)
            rest, at = read_lua_struct(DELTA_FORMATS["order"], data, at)
            record += nk + rest
            for _ in range(rest[-1]):  # type: ignore[arg-type]
                category, at = read_lua_struct(DELTA_FORMATS["category"], data, at)
                record += category
        elif kind == b"c":
            rest, at = read_lua_struct(DELTA_FORMATS["click"], data, at)
            record += rest
        else:
            (count,), at = read_lua_struct(DELTA_FORMATS["attributes"], data, at)
            for _ in range(count):  # type: ignore[call-overload]
                pair, at = read_lua_struct(DELTA_FORMATS["attribute"], data, at)
                record += pair
        records.append(record)
    return records


def test_packed_deltas_read_back_in_the_registered_formats() -> None:
    t0 = 1_767_225_600_123
    click = Delta("clicks:0", 7, token("e1"), t0, 20454, "click", short_hash("s"), "email", "iOS")
    bare_click = Delta("clicks:0", 8, token("e2"), t0 + 1, 20454, "click")
    receipt = Delta(
        "receipts:3",
        2**40 + 1,
        token("e3"),
        t0 + 2,
        -3,
        "order",
        origin="store",
        basket=19.99,
        returned=4.5,
        net=15.49,
        categories=(("Bäckerei", 3.2), ("uncategorized", 12.29)),
        payment_method="girocard",
        order_token=token("receipt:s1/r9"),
    )
    attributes = Delta(
        "attributes:1", 9, token("e4"), t0 + 3, 20454, "attributes",
        attributes=(("city", '"Zürich"'), ("vip", "true")),
    )  # fmt: skip
    codes = {"clicks:0": "\x01:0", "receipts:3": "\x02:3", "attributes:1": "\x03:1"}
    records = read_deltas(packed_deltas([click, bare_click, receipt, attributes], codes))
    head = [
        [
            KIND_WIRE[d.kind].encode(),
            codes[d.source].encode(),
            float(d.offset),
            float(d.ts),
            d.day,
            bytes.fromhex(d.event_token),
        ]
        for d in (click, bare_click, receipt, attributes)
    ]
    assert records == [
        head[0] + [bytes.fromhex(short_hash("s")), b"email", b"iOS"],
        head[1] + [b"", b"", b""],
        head[2]
        + [bytes.fromhex(token("receipt:s1/r9")), b"store", 19.99, 4.5, 15.49, b"girocard"]
        + [b"", 2, "Bäckerei".encode(), 3.2, b"uncategorized", 12.29],
        head[3] + [b"city", '"Zürich"'.encode(), b"vip", b"true"],
    ]


def test_script_writes_exactly_the_finding_wire_names() -> None:
    body = CODE[CODE.index("local function push_finding") :]
    body = body[: body.index("\nend")]
    assert re.findall(r'"(\w+)":', body) == list(FINDING_WIRE.values())
    finding = Finding("lapsed", 1, 2, 3.5, 4.25, 5.0, None)
    assert finding_from_json(finding_to_json(finding)) == finding


def test_script_reply_has_the_registry_arity() -> None:
    last = CODE.rstrip().rsplit("return {", 1)[1]
    depth, items = 0, 1
    for char in last.rstrip("}"):
        depth += char in "({"
        depth -= char in ")}"
        items += char == "," and depth == 0
    assert items == len(APPLY_REPLY)


def test_reference_writes_only_registry_fields() -> None:
    """Every field the Python reference writes is one the registry defines."""
    t0 = 1_767_225_600_000
    cfg = ProfileConfig(map_cap=2)
    deltas = []
    for i in range(40):
        ts = t0 + i * 5 * DAY_MS
        base = {"source": "t:0", "offset": i, "event_token": token(str(i)), "ts": ts}
        base["day"] = ts // DAY_MS
        kind = ("click", "order", "order", "attributes")[i % 4]
        deltas.append(
            Delta(
                kind=kind,  # type: ignore[arg-type]
                session_token=f"{i % 3:08x}",
                channel=f"ch{i % 5}",
                device=f"dev{i % 4}",
                origin=("online", "store")[i % 2],
                basket=10.0 + i,
                net=10.0 + i,
                categories=((f"cat{i % 6}", 10.0),),
                payment_method=f"pm{i % 3}",
                attributes=(("tier", '"gold"'),),
                order_token=token(f"order{i}") if kind == "order" else None,
                **base,  # type: ignore[arg-type]
            )
        )
    state = fold(deltas, cfg)
    judge_lapses(state, t0 + 400 * DAY_MS, cfg)
    assert len(state.fields) > 30
    assert [name for name in state.fields if not is_profile_field(name)] == []


def test_stored_codes_are_one_byte_distinct_and_pinned() -> None:
    assert set(layout.STORED_NAMES) == layout.FIELDS
    codes = list(layout.STORED_NAMES.values())
    assert len(set(codes)) == len(codes)
    for code in codes:
        # A one-byte MessagePack integer; from 64 up, so no map of codes alone
        # is a run 1..n (Redis's cmsgpack would pack it as an array).
        assert 64 <= code <= 127, code
        assert len(msgpack.packb(code)) == 1
        assert layout.field_name(code) == layout.FIELD_OF_STORED[code]
        assert layout.stored_name(layout.FIELD_OF_STORED[code]) == code
    # The migration's table: a long name and a two-letter one each to its
    # code (quoted: 'or' would be a Lua keyword as a key).
    table = layout.lua_stored_names()
    assert f"['orders'] = {layout.STORED_NAMES['orders']}" in table
    assert f"['or'] = {layout.STORED_NAMES['orders']}" in table
    assert set(layout.LAYOUT_5_NAMES) == layout.FIELDS
    # Codes are a wire format: changing one takes a new LAYOUT_VERSION and a
    # step in `patronage store migrate`, then a new digest here.
    digest = hashlib.sha256(repr(sorted(layout.STORED_NAMES.items())).encode()).hexdigest()
    assert (layout.LAYOUT_VERSION, digest[:16]) == (7, "8781b2b632d5fa1d")
    # ... and so are the two-letter names the migration still reads.
    digest = hashlib.sha256(repr(sorted(layout.LAYOUT_5_NAMES.items())).encode()).hexdigest()
    assert digest[:16] == "34e8ffc602ebf2f3"


@pytest.mark.parametrize(
    ("field", "stored"),
    [
        ("o:purchases:p0", "\x01purchases:p0"),
        ("o:clicks:p3#e2", "\x01clicks:p3#e2"),
        ("a:consent_email", "\x02consent_email"),
        ("a:a:odd", "\x02a:odd"),  # only the first prefix is ours
        ("cat:Haushalt & Küche", "\x03Haushalt & Küche"),
        ("cat:_other", "\x03_other"),
        ("ch:email", "\x04email"),
        ("dev:mobile", "\x05mobile"),
        ("pay:klarna", "\x06klarna"),
        ("#cat:", "#\x03"),
        ("#pay:", "#\x06"),
        ("cat:#", "\x03#"),  # layout 1's count, moved by the next apply
        ("x:unknown", "x:unknown"),
    ],
)
def test_prefixed_fields_are_stored_behind_one_byte(field: str, stored: str) -> None:
    assert layout.stored_name(field) == stored
    assert layout.field_name(stored) == field


def test_stored_prefixes_are_pinned() -> None:
    """A prefix's byte is a wire format, like a code: distinct control bytes
    that no name of layouts 1-6 began with."""
    assert set(layout.STORED_PREFIXES) == {
        layout.OFFSET_PREFIX,
        layout.ATTRIBUTE_PREFIX,
        *layout.MAP_PREFIXES,
    }
    assert sorted(layout.STORED_PREFIXES.values()) == [chr(b) for b in range(1, 7)]
    digest = hashlib.sha256(repr(sorted(layout.STORED_PREFIXES.items())).encode()).hexdigest()
    assert digest[:16] == "db7ac28de7c312f1"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ('1788394259519|"south"', 'mtkrrm7z|"south"'),
        ("1788394259519|true", "mtkrrm7z|true"),
        ("0|null", "0|null"),
        ("-86400000|1", "-1ffuo0|1"),
        ('1788394259519|"a|b"', 'mtkrrm7z|"a|b"'),  # a bar in the value stays
    ],
)
def test_attribute_times_are_stored_in_base_36(value: str, stored: str) -> None:
    assert layout.stored_attribute(value) == stored
    assert layout.attribute_of_stored(stored) == value


def test_offset_fields_hold_their_topics_code() -> None:
    topics = layout.TopicCodes({"clicks": "0", "prod.retail.store-receipts.v2": "1"})
    fields = {"o:clicks:3": 7, "o:prod.retail.store-receipts.v2:11#e2": 40, "orders": 1}
    raw = layout.encode_profile(fields, b"", topics)
    stored, _ = layout.split_profile(raw)
    assert stored == {"\x010:3": 7, "\x011:11#e2": 40, layout.STORED_NAMES["orders"]: 1}
    assert layout.decode_profile(raw, topics) == fields
    # A code the table lacks (given by another worker since it was read)
    # is refused, not read as some other topic.
    with pytest.raises(layout.UnknownTopicCode):
        layout.decode_profile(raw, layout.TopicCodes({"clicks": "0"}))
    # The store's script gives codes under the name the table skips.
    script = resources.files("patronage.streams").joinpath("lua/topics.lua").read_text("utf-8")
    assert f"'{layout.NEXT_TOPIC_CODE}'" in script


def test_decoding_remembers_names_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_profile keeps each stored key's name (per topic table); past
    the bound it still translates, it only stops keeping."""
    monkeypatch.setattr(layout, "_NAMES_KEPT", len(layout.FIELD_OF_STORED) + 2)
    topics = layout.TopicCodes({"clicks": "0"})
    for shop in range(5):
        fields = {"orders": 2, f"cat:shop{shop}": 1.5, f"ch:c{shop}": 1, "o:clicks:1": 9}
        assert layout.decode_profile(layout.encode_profile(fields, b"", topics), topics) == fields
    assert len(topics.names) == len(layout.FIELD_OF_STORED) + 2


def test_a_profile_under_codes_packs_and_reads_back() -> None:
    """Codes and prefixed names in one map: Python packs what Redis's cmsgpack
    reads, and reads back the names."""
    fields = {
        "first_seen": 1_767_225_600_000,
        "orders": 3,
        "o:clicks:p0": 9,
        "cat:home": 2.5,
        "#cat:": 1,
        "a:region": '1788394259519|"south"',
    }
    raw = layout.encode_profile(fields, b"trail")
    assert layout.decode_profile(raw) == fields
    assert layout.split_profile(raw)[1] == b"trail"
    stored, _ = layout.split_profile(raw)
    assert stored == {
        layout.STORED_NAMES["first_seen"]: 1_767_225_600_000,
        layout.STORED_NAMES["orders"]: 3,
        "\x01clicks:p0": 9,
        "\x03home": 2.5,
        "#\x03": 1,
        "\x02region": 'mtkrrm7z|"south"',
    }


def test_per_origin_fields_are_registry_fields() -> None:
    tables = dict(re.findall(r"^local (\w+_AT) = \{([^}]*)\}", CODE, re.M))
    assert set(tables) == {"ORDERS_AT", "SPEND_AT"}
    for body in tables.values():
        pairs = dict(re.findall(r"(\w+) = '([^']*)'", body))
        assert set(pairs) == set(layout.ORIGINS)
        assert set(pairs.values()) <= layout.FIELDS


@pytest.mark.parametrize("name", ["apply", "risk", "erase", "segment", "migrate"])
def test_scripts_run_with_stored_names_only(name: str) -> None:
    """The store loads each script with its quoted field names replaced: none
    of layout.py's long names may reach Redis (a field written under both
    names would be read back twice)."""
    from patronage.streams.store import _lua

    source = resources.files("patronage.streams").joinpath(f"lua/{name}.lua").read_text("utf-8")
    loaded = _lua(name)
    assert loaded.startswith("#!lua")
    assert not re.search(r"^--!include", loaded, re.M)  # every shared part pasted in
    if name == "migrate":  # its table maps the names it renames
        loaded = loaded.replace(layout.lua_stored_names(), "", 1)
    quoted = set(re.findall(r"'([a-z0-9_]+)'", loaded))
    assert not quoted & layout.FIELDS
    assert not quoted & set(layout.LAYOUT_5_NAMES.values())
    if name in ("apply", "risk", "erase"):
        assert set(re.findall(r"'([a-z0-9_]+)'", source)) & layout.FIELDS
    if name != "migrate":  # (which reads layout 6's prefixes)
        assert not set(re.findall(r"'([a-z]+:)'", loaded)) & set(layout.STORED_PREFIXES)
    if name == "apply":
        assert "inc_capped('cat:'," in source
        assert "--!include base36" in source and "local function from_base36" in loaded
        assert "inc_capped('\\3'," in loaded
        codes = layout.STORED_NAMES
        assert (
            f"ORDERS_AT = {{online = {codes['orders_online']}, store = {codes['orders_store']}}}"
            in loaded
        )


def test_trail_codec_round_trips_and_is_pinned() -> None:
    """The trail is a wire format (stored values outlive versions): the
    codec reads back what it writes, and a fixed trail has fixed bytes."""
    trail = layout.Trail(
        bitmap=b"\x80\x01",
        sessions={"0000000a": 1_767_225_600_000, "ffffffff": 1_767_225_600_500},
        event_ids=[("010203040506", 490_896), ("111213141516", 16_777_215)],
        edges={20_454: (1_767_225_600_000, 1_767_229_200_000), 20_455: (1, 2)},
        order_keys=["a1a2a3a4a5a6"],
    )
    raw = layout.encode_trail(trail)
    assert layout.decode_trail(raw) == trail
    assert (
        layout.decode_trail(None) == layout.decode_trail(b"") == layout.Trail(b"", {}, [], {}, [])
    )
    assert len(raw) == 13 + 2 + 2 * 10 + 2 * 9 + 2 * 16 + 6
    # the format byte, then the four parts' lengths in three bytes each
    assert raw[:13] == bytes.fromhex("06 000002 000014 000012 000020")
    # a session: its token, then its first ms in six bytes
    assert raw[15:25] == bytes.fromhex("0000000a 019b76daa800")
    # an event id: its token, then its hour in three bytes (the last one 2**24 - 1)
    assert raw[35:53] == bytes.fromhex("010203040506 077d90 111213141516 ffffff")
    # an unjudged day: the day, then its first and last ms in six bytes each
    assert raw[53:69] == bytes.fromhex("00004fe6 019b76daa800 019b77119680")
    # a natural key's token
    assert raw[-6:] == bytes.fromhex("a1a2a3a4a5a6")
    assert hashlib.sha256(raw).hexdigest()[:16] == "716ba9e98d0ad0d1"


def test_a_trail_of_an_older_layout_is_refused_not_misread() -> None:
    """Layout 5's trail began with a 4-byte length (a zero byte); read as
    layout 6 it would give wrong records, so it is refused."""
    older = struct.pack(">IIII", 1, 0, 0, 0) + b"\x80"
    with pytest.raises(ValueError, match="format byte 0"):
        layout.decode_trail(older)


def test_script_packs_the_trail_as_the_registry_says() -> None:
    """The script's struct formats are the registry's (Lua's struct spells a
    4-byte int I4 where Python's says I)."""
    lua = {
        "header": "'>BI3I3I3I3', TRAIL_FORMAT",
        "session ms": "'>I6'",
        "edge": "'>i4I6I6'",
        "event hour": "'>I3'",
    }
    for what, spelled in lua.items():
        assert spelled in CODE, what
    assert f"TRAIL_FORMAT = {layout.TRAIL_FORMAT}" in CODE
    assert layout.TRAIL_LENGTH_BYTES == 3 and layout.TRAIL_HEADER_BYTES == 13
    assert layout.SESSION_TOKEN_BYTES == 4 and layout.SESSION_MS_BYTES == 6
    assert layout.EVENT_TOKEN_BYTES == 6 and layout.EVENT_HOUR_BYTES == 3
    assert layout.EDGE_DAY == ">i" and layout.EDGE_MS_BYTES == 6
    assert layout.ORDER_KEY_BYTES == 6
    assert "EDGE = 16" in CODE and "SREC = 10" in CODE and "EREC = 9" in CODE
    assert "record_at(order_keys, nk, 6)" in CODE
    # a record's hour follows its 6-byte token
    assert "struct.unpack('>I3', eids, (i - 1) * EREC + 7)" in CODE
