"""JSON on the hot path: orjson where it gives the standard library's answer.

orjson parses and writes JSON two to three times faster than the standard
library, but answers differently in places: it refuses lone surrogate
escapes, numbers that overflow a double and nesting deeper than 1,024; it
reads an integer beyond 64 bits as a float; it accepts nesting the standard
library's recursion limit refuses. Payloads that could meet the last two
(a run of 19 digits, many brackets) and everything orjson refuses go to the
standard library, so a payload reads as it always did and a refusal keeps the
standard library's message (tests/unit/test_jsontext.py holds the two equal).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every payload (json.loads with an option builds one per call).
_STANDARD = json.JSONDecoder(parse_constant=_no_constant)


# -9223372036854775809 (19 digits) is already past int64: orjson makes it a
# float. Found by mapping every digit to "9" (C speed; a regex took 2.7 µs).
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_DIGITS = b"9" * 19
# Well below both libraries' depth limits (orjson 1,024; the standard
# library's depends on the stack), and far above any real event's nesting;
# counted only in payloads long enough to hold that many.
_MANY_BRACKETS = 256


def loads(raw: bytes) -> Any:
    """The JSON document in UTF-8 `raw`; ValueError or RecursionError (the
    standard library's) if it is not one. NaN and Infinity are refused, as
    RFC 8259 says."""
    shallow = len(raw) < 2 * _MANY_BRACKETS or (raw.count(b"[") + raw.count(b"{") < _MANY_BRACKETS)
    if shallow and _LONG_DIGITS not in raw.translate(_DIGITS_AS_NINES):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _STANDARD.decode(raw.decode("utf-8"))


def dumps_compact(value: Any) -> bytes:
    """`value` as compact JSON (UTF-8 bytes)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        # e.g. an integer beyond 64 bits; json reads both spellings alike.
        return json.dumps(value, separators=(",", ":")).encode()


def dumps_text(value: str | int | float | bool | None) -> str:
    """A scalar as `json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)` writes it, ten times faster (a customer attribute's
    stored value: 1.37 µs each with the standard library, whose encoder is
    built anew for every call with options). Floats keep the standard
    library's spelling (orjson writes 1e-7 where it writes 1e-07); what
    orjson refuses (a lone surrogate, an integer beyond 64 bits) is written
    by the standard library."""
    if isinstance(value, float):
        return json.dumps(value)
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads_own(raw: bytes) -> Any:
    """JSON this project wrote (dumps_compact: the learner's `segment-features`
    messages), read by orjson without `loads`'s checks, which only matter for
    a producer's payload (with them a 56 KB message of 200 vectors went to the
    standard library: 4.7 µs per vector against 1.1). What orjson refuses (a
    NaN an older worker's json.dumps wrote) is read by the standard library,
    NaN included, as before."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
