"""Validate and correct raw event bytes before they touch a profile.

Each decision is either a correction (the event is kept, the fix is named so a
metric can count it) or a rejection (the event goes to the DLQ with a reason a
person can act on). Pure: `now_ms` is an argument.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from patronage.models.contracts import (
    EVENT_MODELS,
    KNOWN_ATTRIBUTES,
    UTC,
    AttributeValue,
    CustomerAttributes,
    Event,
    EventKind,
    Item,
    Purchase,
    StoreReceipt,
    parse_ts,
)

YEAR_2000_MS = 946_684_800_000


@dataclass(frozen=True)
class Rules:
    """Validation limits; every one is a setting."""

    currencies: dict[str, float] = field(default_factory=lambda: {"EUR": 1.0})
    default_zone: dt.tzinfo = UTC
    max_future_ms: int = 5 * 60 * 1000
    min_ts_ms: int = YEAR_2000_MS
    max_payload_bytes: int = 64 * 1024
    max_items: int = 500
    max_quantity: int = 1000
    max_unit_price: Decimal = Decimal("1000000")
    # A total within this much of the item sum is rounding, not an error.
    total_tolerance: Decimal = Decimal("0.01")


@dataclass(frozen=True)
class Accepted:
    kind: EventKind
    event: Event
    ts_ms: int
    corrections: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejected:
    code: str
    reason: str


class _Reject(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def validate(raw: bytes, kind: EventKind, now_ms: int, rules: Rules) -> Accepted | Rejected:
    try:
        return _validate(raw, kind, now_ms, rules)
    except _Reject as rej:
        return Rejected(rej.code, rej.reason)


def _validate(raw: bytes, kind: EventKind, now_ms: int, rules: Rules) -> Accepted:
    if len(raw) > rules.max_payload_bytes:
        raise _Reject(
            "payload_too_large",
            f"payload is {len(raw)} bytes; the limit is {rules.max_payload_bytes}",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(
            "not_utf8", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _Reject("invalid_json", f"payload is not valid JSON: {exc}"[:300]) from exc
    if not isinstance(doc, dict):
        raise _Reject("not_an_object", f"payload must be a JSON object, got {type(doc).__name__}")

    model = EVENT_MODELS[kind]
    try:
        event: Event = model.model_validate(doc)  # type: ignore[assignment]
    except ValidationError as exc:
        raise _Reject("schema", _describe(exc, kind)) from exc

    try:
        ts_ms = parse_ts(event.ts, rules.default_zone)
    except ValueError as exc:
        raise _Reject("bad_timestamp", str(exc)) from exc
    if ts_ms > now_ms + rules.max_future_ms:
        ahead_s = (ts_ms - now_ms) / 1000
        raise _Reject("future_timestamp", f"ts is {ahead_s:.0f}s in the future")
    if ts_ms < rules.min_ts_ms:
        raise _Reject("ancient_timestamp", "ts is before 2000-01-01")

    corrections: list[str] = []
    if isinstance(event, Purchase | StoreReceipt):
        event = _check_basket(event, rules, corrections)
    elif isinstance(event, CustomerAttributes):
        event = _check_attributes(event, ts_ms, corrections)
    return Accepted(kind, event, ts_ms, tuple(corrections))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _describe(exc: ValidationError, kind: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    suffix = f" (+{more} more)" if more > 0 else ""
    return f"not a valid {kind}: " + "; ".join(parts) + suffix


def _check_basket(
    event: Purchase | StoreReceipt, rules: Rules, corrections: list[str]
) -> Purchase | StoreReceipt:
    if event.currency not in rules.currencies:
        known = ", ".join(sorted(rules.currencies))
        raise _Reject("unknown_currency", f"currency {event.currency} is not configured ({known})")
    if len(event.items) > rules.max_items:
        raise _Reject("too_many_items", f"{len(event.items)} lines; the limit is {rules.max_items}")
    kept: list[Item] = []
    for index, item in enumerate(event.items):
        if abs(item.quantity) > rules.max_quantity:
            raise _Reject(
                "absurd_quantity",
                f"items.{index}.quantity {item.quantity} exceeds ±{rules.max_quantity}",
            )
        if item.unit_price < 0:
            raise _Reject("negative_price", f"items.{index}.unit_price is negative")
        if item.unit_price > rules.max_unit_price:
            raise _Reject(
                "absurd_price",
                f"items.{index}.unit_price {item.unit_price} exceeds {rules.max_unit_price}",
            )
        if item.quantity == 0:
            corrections.append("zero_quantity_line_dropped")
            continue
        if not item.category:
            corrections.append("missing_category")
            item = Item.model_construct(
                sku=item.sku,
                category="uncategorized",
                quantity=item.quantity,
                unit_price=item.unit_price,
            )
        kept.append(item)
    if not kept:
        raise _Reject("empty_basket", "no item lines with a non-zero quantity")
    item_sum = sum((i.unit_price * i.quantity for i in kept), Decimal(0))
    if abs(item_sum - event.total) > rules.total_tolerance:
        # Lines are what was sold; a disagreeing total is a till/shop rounding
        # or summing bug, so trust the lines and count the correction.
        corrections.append("total_mismatch")
    unchanged = len(kept) == len(event.items) and all(
        a is b for a, b in zip(kept, event.items, strict=True)
    )
    if unchanged and item_sum == event.total:
        return event  # the common case: nothing to correct, no copy
    return event.model_copy(update={"items": kept, "total": item_sum})


def _check_attributes(
    event: CustomerAttributes, ts_ms: int, corrections: list[str]
) -> CustomerAttributes:
    cleaned: dict[str, AttributeValue] = {}
    year = dt.datetime.fromtimestamp(ts_ms / 1000, tz=UTC).year
    for name, value in event.attributes.items():
        accepted = KNOWN_ATTRIBUTES.get(name)
        if accepted is None:
            corrections.append("unknown_attribute_dropped")
            continue
        if value is None:
            cleaned[name] = None  # an explicit null clears the attribute
            continue
        if int in accepted and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
            corrections.append("attribute_coerced")
        if isinstance(value, bool) and bool not in accepted:
            corrections.append("attribute_type_dropped")
            continue
        if not isinstance(value, accepted):
            corrections.append("attribute_type_dropped")
            continue
        if isinstance(value, str):
            value = value.strip()[:64]
        if name == "birth_year" and not (1900 <= int(value) <= year):
            corrections.append("attribute_range_dropped")
            continue
        if name == "children" and not (0 <= int(value) <= 30):
            corrections.append("attribute_range_dropped")
            continue
        cleaned[name] = value
    if not cleaned:
        raise _Reject("no_known_attributes", "no known attribute with a usable value")
    return event.model_copy(update={"attributes": cleaned})
