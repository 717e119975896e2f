"""Validate and correct raw event bytes before they touch a profile.

Each decision is either a correction (the event is kept, the fix is named so a
metric can count it), a dropped line (the rest of the receipt is kept, the
line goes to the DLQ with its reason) or a rejection (the event goes to the
DLQ with a reason a person can act on). Good data is never lost for the sake
of bad data beside it: an unknown optional label becomes `other`, a broken
line leaves the receipt, an unusable `total` is recomputed from the lines.
Pure: `now_ms` is an argument.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, NamedTuple, TypeGuard, TypeVar

from mypy_extensions import mypyc_attr
from pydantic import BaseModel, ValidationError

from patronage.models import jsontext
from patronage.models.contracts import (
    BASKET_EVENTS,
    IDENTIFIER_PREFIXES,
    KNOWN_ATTRIBUTES,
    MAX_ID_LENGTH,
    UTC,
    AttributeValue,
    Channel,
    Click,
    CustomerAttributes,
    Event,
    EventKind,
    Item,
    PageType,
    Purchase,
    StoreReceipt,
    identity_key,
    parse_ts,
    text_problem,
)
from patronage.models.kinds import KINDS

M = TypeVar("M", bound=BaseModel)

YEAR_1990_MS = 631_152_000_000
# Money and quantities are kept to this many decimal places (a millionth of a
# unit): enough for any real price or weight, and it keeps exponents sane.
DECIMAL_PLACES = Decimal("0.000001")


@mypyc_attr(native_class=False)  # frozen: see patronage/compiled.py
@dataclass(frozen=True)
class Rules:
    """Validation limits; every one is a setting (see streams/settings.py)."""

    currencies: dict[str, float] = field(default_factory=lambda: {"EUR": 1.0})
    default_zone: dt.tzinfo = UTC
    max_future_ms: int = 5 * 60 * 1000
    min_ts_ms: int = YEAR_1990_MS
    max_payload_bytes: int = 64 * 1024
    max_items: int = 500
    max_quantity: Decimal = Decimal(1000)
    max_unit_price: Decimal = Decimal(1_000_000)
    # A total within this much of the item sum is rounding, not an error.
    total_tolerance: Decimal = Decimal("0.01")
    # Dead letters keep at most this much of the original payload.
    dlq_payload_max_bytes: int = 64 * 1024


@mypyc_attr(native_class=False)  # frozen: see patronage/compiled.py
@dataclass(frozen=True)
class LineProblem:
    """A receipt line that was dropped while the rest of the receipt counts."""

    index: int
    code: str
    reason: str
    line: Any  # the line as sent (a JSON value)


# Not frozen: built once per event, and a frozen dataclass's __init__ costs
# twice as much (every field set through object.__setattr__).
@dataclass(slots=True)
class Accepted:
    kind: EventKind
    event: Event
    ts_ms: int
    corrections: tuple[str, ...] = ()
    dropped_lines: tuple[LineProblem, ...] = ()


@mypyc_attr(native_class=False)  # frozen: see patronage/compiled.py
@dataclass(frozen=True)
class Rejected:
    code: str
    reason: str


class _Reject(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# Optional labels that fall back to `other` when a shop sends a value we do
# not know, and free-text labels that are cleaned or dropped, never fatal.
ENUM_LABELS: dict[str, dict[str, type[StrEnum]]] = {
    "click": {"page_type": PageType, "channel": Channel},
    "purchase": {"channel": Channel},
}
FREE_LABELS: dict[str, tuple[str, ...]] = {
    "click": ("product_id", "category", "device"),
    "purchase": ("payment_method",),
    "store_receipt": ("payment_method", "loyalty_card"),
}


def validate(raw: bytes, kind: EventKind, now_ms: int, rules: Rules) -> Accepted | Rejected:
    try:
        return _validate(raw, kind, now_ms, rules)
    except _Reject as rej:
        return Rejected(rej.code, rej.reason)


def decode_object(raw: bytes, rules: Rules) -> dict[str, Any]:
    """Bytes -> a JSON object, or a _Reject saying why not."""
    if len(raw) > rules.max_payload_bytes:
        raise _Reject(
            "payload_too_large",
            f"payload is {len(raw)} bytes; the limit is {rules.max_payload_bytes} "
            "(PATRONAGE_MAX_PAYLOAD_BYTES)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(
            "not_utf8", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        if text.startswith("\ufeff"):  # what json.loads refuses first
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        doc = jsontext.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Reject("invalid_json", f"payload is not valid JSON: {exc}"[:300]) from exc
    if not isinstance(doc, dict):
        raise _Reject("not_an_object", f"payload must be a JSON object, got {type(doc).__name__}")
    return doc


def _validate(raw: bytes, kind: EventKind, now_ms: int, rules: Rules) -> Accepted:
    doc = decode_object(raw, rules)
    corrections: list[str] = []
    dropped: list[LineProblem] = []
    _clean_labels(doc, kind, corrections)
    basket = kind in ("purchase", "store_receipt")
    lines: list[Item] = []
    claimed_total: Decimal | None = None
    if basket:
        lines, dropped = _check_lines(doc.get("items"), rules, corrections)
        claimed_total = _usable_decimal(doc.get("total"))
        # Lines are what was sold: the model sees the good lines and a
        # placeholder total, which is replaced by the sum of those lines.
        doc = {**doc, "items": [], "total": 0}

    event: Event | None = click_as_sent(doc) if kind == "click" else None
    if event is None:
        try:
            event = KINDS[kind].model.model_validate(doc)  # type: ignore[assignment]
        except ValidationError as exc:
            raise _Reject("schema", _describe(exc, kind)) from exc
    assert event is not None

    ts_ms = _event_time(event, now_ms, rules)
    if isinstance(event, BASKET_EVENTS):
        event = _settle_basket(event, lines, dropped, claimed_total, rules, corrections)
    elif isinstance(event, CustomerAttributes):
        event = _check_attributes(event, ts_ms, corrections)
    return Accepted(kind, event, ts_ms, tuple(corrections), tuple(dropped))


_CLICK_FIELD_SET = frozenset(Click.model_fields)
_PAGE_TYPES = {member.value: member for member in PageType}
_CHANNELS = {member.value: member for member in Channel}
# A time as the model keeps it (read later by `_event_time`); not a bool.
_TS_AS_SENT = (int, float, str)


def click_as_sent(doc: dict[str, Any]) -> Click | None:
    """The Click that `Click.model_validate(doc)` gives, built without it
    when every value is one validation keeps as it is (a cleaned label, an
    id as sent, a time); None for anything else, which the model then
    validates (or refuses with its reasons). Clicks are most of a shop's
    events, and their validation was a third of preparing one
    (docs/benchmarks.md, "…clicks built without validation")."""
    values = _click_values(doc)
    if values is None:
        return None
    return _built(Click, values, doc.keys() & _CLICK_FIELD_SET)


class SentClick(NamedTuple):
    """What a batch needs of a click validation keeps as sent."""

    profile_id: str
    ts_ms: int
    event_id: str
    session_id: str
    channel: str | None
    device: str | None
    corrections: tuple[str, ...]


def sent_click(raw: bytes, now_ms: int, rules: Rules) -> SentClick | None:
    """A click's fields as `validate` would accept them, without the Click
    object (nor its profile_id, an interpreted property): None for any
    click `click_as_sent` would not build or `validate` would refuse, which
    `validate` then judges and describes. Most of a shop's events are
    clicks; the object cost a fifth of preparing one."""
    try:
        doc = decode_object(raw, rules)
        corrections: list[str] = []
        fields = _click_fields(doc)
        if fields is None:
            # (a click sent clean needs no cleaning: `_clean_labels` would
            # change nothing `_click_fields` accepts)
            _clean_labels(doc, "click", corrections)
            fields = _click_fields(doc)
            if fields is None:
                return None
        event_id, ts, customer_id, anonymous_id, session_id, _, _, _, channel, device = fields
        ts_ms = _checked_time(ts, now_ms, rules)
    except _Reject:
        return None
    return SentClick(
        identity_key(customer_id, anonymous_id, None),  # type: ignore[arg-type]
        ts_ms,
        event_id,
        session_id,
        channel,
        device,
        tuple(corrections),
    )


# A click's fields in Click's order, as sent: event_id, ts, customer_id,
# anonymous_id, session_id, page_type, product_id, category, channel, device.
ClickFields = tuple[str, Any, str | None, str | None, str, str, Any, Any, str | None, Any]


def _click_values(doc: dict[str, Any]) -> dict[str, Any] | None:
    """A click's field values when validation keeps every one as sent."""
    fields = _click_fields(doc)
    if fields is None:
        return None
    values = dict(zip(_CLICK_FIELDS, fields, strict=True))
    values["page_type"] = _PAGE_TYPES[values["page_type"]]
    channel = values["channel"]
    values["channel"] = None if channel is None else _CHANNELS[channel]
    return values


_CLICK_FIELDS = tuple(Click.model_fields)


def _click_fields(doc: dict[str, Any]) -> ClickFields | None:
    """A click's fields when validation keeps every one as sent."""
    event_id = doc.get("event_id")
    ts = doc.get("ts")
    session_id = doc.get("session_id")
    page_type = doc.get("page_type")
    if type(ts) not in _TS_AS_SENT or type(page_type) is not str or page_type not in _PAGE_TYPES:
        return None
    if not _kept_as_sent(event_id) or not _kept_as_sent(session_id):
        return None
    customer_id = doc.get("customer_id")
    anonymous_id = doc.get("anonymous_id")
    if customer_id is None and anonymous_id is None:
        return None  # the model says which is missing
    if not _ids_as_sent(customer_id, anonymous_id):
        return None
    channel = doc.get("channel")
    if channel is not None and (type(channel) is not str or channel not in _CHANNELS):
        return None
    product_id, category, device = doc.get("product_id"), doc.get("category"), doc.get("device")
    for label in (product_id, category, device):
        if label is not None and not _kept_as_sent(label):
            return None
    return (
        event_id,
        ts,
        customer_id,
        anonymous_id,
        session_id,
        page_type,
        product_id,
        category,
        channel,
        device,
    )


def _kept_as_sent(value: Any) -> TypeGuard[str]:
    return type(value) is str and _storable_as_sent(value)


def _ids_as_sent(customer_id: Any, anonymous_id: Any) -> bool:
    """Whether a customer id and a cookie (either may be absent) are kept as
    sent: stored unchanged, no brace (they become Redis hash tags), the
    customer id not shaped like an identifier's key."""
    for key in (customer_id, anonymous_id):
        if key is not None and (not _kept_as_sent(key) or "{" in key or "}" in key):
            return False
    return customer_id is None or not customer_id.startswith(IDENTIFIER_PREFIXES)


class SentOrder(NamedTuple):
    """What a batch needs of an order (a purchase or a till receipt)
    validation keeps as sent."""

    profile_id: str
    ts_ms: int
    event_id: str
    store_id: str | None  # a till receipt's (its receipt numbers are the store's)
    order_id: str  # a purchase's order id, a till receipt's receipt id
    channel: str | None  # a purchase's
    currency: str
    payment_method: str | None
    lines: list[tuple[str, Decimal]]  # each kept line's category and unit price x quantity
    corrections: tuple[str, ...]


def sent_order(raw: bytes, kind: str, now_ms: int, rules: Rules) -> SentOrder | None:
    """An order's fields and lines as `validate` would accept them, without
    its model or an Item per line: None for any order validation would
    clean otherwise, drop a line of or refuse, which `validate` then judges
    and describes. A till receipt of ten lines cost six clicks to prepare,
    most of it in its lines (docs/benchmarks.md, "…orders without models")."""
    try:
        doc = decode_object(raw, rules)
        corrections: list[str] = []
        _clean_labels(doc, kind, corrections)
        head = _order_head(doc, kind == "store_receipt", rules)
        if head is None:
            return None
        lines = _lines_as_sent(doc.get("items"), rules, corrections)
        if not lines:
            return None  # (a line dropped, or none left: validation says why)
        ts_ms = _checked_time(doc["ts"], now_ms, rules)
    except _Reject:
        return None
    item_sum = sum((value for _, value in lines), Decimal(0))
    _check_total(item_sum, _usable_decimal(doc.get("total")), False, rules, corrections)
    profile_id, store_id, order_id, currency = head
    channel = None if store_id is not None else doc.get("channel")
    return SentOrder(
        profile_id,
        ts_ms,
        doc["event_id"],
        store_id,
        order_id,
        channel,
        currency,
        doc.get("payment_method"),
        lines,
        tuple(corrections),
    )


def _order_head(
    doc: dict[str, Any], store: bool, rules: Rules
) -> tuple[str, str | None, str, str] | None:
    """An order's profile id, store id, order (or receipt) id and currency,
    when validation keeps every field of its head as sent (labels cleaned)."""
    currency = doc.get("currency")
    if (
        type(currency) is not str
        or currency not in rules.currencies
        or not (len(currency) == 3 and currency.isascii() and currency.isalpha())
        or not currency.isupper()
    ):
        return None
    if type(doc.get("ts")) not in _TS_AS_SENT or not _kept_as_sent(doc.get("event_id")):
        return None
    payment_method = doc.get("payment_method")
    if payment_method is not None and not _kept_as_sent(payment_method):
        return None
    customer_id, anonymous_id = doc.get("customer_id"), doc.get("anonymous_id")
    if not _ids_as_sent(customer_id, anonymous_id):
        return None
    card = None
    if store:
        store_id, order_id, card = (
            doc.get("store_id"),
            doc.get("receipt_id"),
            doc.get("loyalty_card"),
        )
        if not _kept_as_sent(store_id):
            return None
        if card is not None and (not _kept_as_sent(card) or "{" in card or "}" in card):
            return None
    else:
        store_id, order_id = None, doc.get("order_id")
        channel = doc.get("channel")
        if channel is not None and channel not in _CHANNELS:
            return None
    profile_id = identity_key(customer_id, anonymous_id, card)
    if profile_id is None or not _kept_as_sent(order_id):
        return None
    return profile_id, store_id, order_id, currency


def _lines_as_sent(
    raw_lines: Any, rules: Rules, corrections: list[str]
) -> list[tuple[str, Decimal]] | None:
    """Each line's category and value (unit price x quantity), as
    `_check_line` keeps them; None if it would drop or clean any line."""
    if type(raw_lines) is not list or len(raw_lines) > rules.max_items:
        return None
    lines: list[tuple[str, Decimal]] = []
    for line in raw_lines:
        if type(line) is not dict:
            return None
        category = line.get("category")
        quantity = _usable_decimal(line.get("quantity"))
        price = _usable_decimal(line.get("unit_price"))
        if quantity is None or price is None or not _kept_as_sent(line.get("sku")):
            return None
        if category is not None and not _kept_as_sent(category):
            return None
        if not _amounts_usable(quantity, price, rules):
            return None
        if quantity == 0:
            corrections.append("zero_quantity_line_dropped")
        elif category is None:
            corrections.append("missing_category")
            lines.append(("uncategorized", price * quantity))
        else:
            lines.append((category, price * quantity))
    return lines


def _event_time(event: Event, now_ms: int, rules: Rules) -> int:
    return _checked_time(event.ts, now_ms, rules)


def _checked_time(ts: Any, now_ms: int, rules: Rules) -> int:
    try:
        ts_ms = parse_ts(ts, rules.default_zone)
    except (ValueError, OverflowError) as exc:
        raise _Reject("bad_timestamp", str(exc)[:300]) from exc
    if ts_ms > now_ms + rules.max_future_ms:
        ahead_s = (ts_ms - now_ms) / 1000
        raise _Reject(
            "future_timestamp",
            f"ts is {ahead_s:.0f}s in the future; the limit is {rules.max_future_ms // 1000}s "
            "(PATRONAGE_MAX_FUTURE_S)",
        )
    if ts_ms < rules.min_ts_ms:
        earliest = dt.datetime.fromtimestamp(rules.min_ts_ms / 1000, tz=UTC).date()
        raise _Reject(
            "ancient_timestamp", f"ts is before {earliest} (PATRONAGE_EARLIEST_EVENT_TIME)"
        )
    return ts_ms


def _describe(exc: ValidationError, kind: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    suffix = f" (+{more} more)" if more > 0 else ""
    return f"not a valid {kind}: " + "; ".join(parts) + suffix


def _clean_labels(doc: dict[str, Any], kind: str, corrections: list[str]) -> None:
    for name, values in _ENUM_VALUES.get(kind, ()):
        value = doc.get(name)
        # Most labels arrive as one of the values: kept without a call.
        if value is not None and not (type(value) is str and value in values):
            doc[name] = _enum_label(value, values, name, corrections)
    for name in FREE_LABELS.get(kind, ()):
        if name in doc:
            doc[name] = free_label(doc[name], name, corrections)


# Each kind's enum labels with their values, looked up once: `Enum.__members__`
# builds a mapping proxy on every access.
_ENUM_VALUES: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    kind: tuple((name, frozenset(member.value for member in enum)) for name, enum in labels.items())
    for kind, labels in ENUM_LABELS.items()
}


def _enum_label(value: Any, values: frozenset[str], name: str, corrections: list[str]) -> str:
    if isinstance(value, str):
        normal = value.strip().lower()
        if normal in values:
            return normal
    corrections.append(f"unknown_{name}")
    return "other"


def free_label(value: Any, name: str, corrections: list[str]) -> str | None:
    """An optional free-text label, usable as it is, or cleaned, or dropped."""
    if value is None:
        return None
    if type(value) is str and _storable_as_sent(value):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        corrections.append(f"{name}_dropped")
        return None
    if not isinstance(value, str):
        corrections.append(f"{name}_coerced")  # a numeric product id is still an id
        value = str(value)
    value = value.strip()
    if text_problem(value):
        corrections.append(f"{name}_dropped")
        return None
    if len(value) > MAX_ID_LENGTH:
        corrections.append(f"{name}_truncated")
        value = value[:MAX_ID_LENGTH]
    return value or None


# Labels and SKUs repeat (a shop's categories, its catalogue): each distinct
# one is checked once. Bounded, so a flood of distinct values stays small.
_STORABLE: set[str] = set()
_STORABLE_MAX = 16_384


def _storable_as_sent(text: str) -> bool:
    """Whether a label or id is kept exactly as sent: 1 to MAX_ID_LENGTH
    characters, no surrounding space, nothing `text_problem` refuses."""
    if text in _STORABLE:
        return True
    if 0 < len(text) <= MAX_ID_LENGTH and text == text.strip() and not text_problem(text):
        if len(_STORABLE) >= _STORABLE_MAX:
            _STORABLE.clear()
        _STORABLE.add(text)
        return True
    return False


# Prices and quantities repeat (a shop's catalogue, "1", "2"): each distinct
# value is turned into a Decimal once. Equal keys (1 and 1.0) are equal
# numbers, so they share a result; strings are keyed apart from numbers.
# Only short values are kept, so a flood of distinct long ones stays small.
_DECIMALS: dict[int | float | str, Decimal | None] = {}
_DECIMALS_MAX = 65_536
_DECIMAL_KEY_CHARS = 32
_DECIMAL_KEY_INT = 10**18


def _usable_decimal(value: Any) -> Decimal | None:
    """A finite, sanely sized number from JSON (number or numeric string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return _DECIMALS[value]
    except KeyError:
        pass
    if (type(value) is str and len(value) > _DECIMAL_KEY_CHARS) or (
        type(value) is int and not -_DECIMAL_KEY_INT < value < _DECIMAL_KEY_INT
    ):
        return _to_decimal(value)
    if len(_DECIMALS) >= _DECIMALS_MAX:
        _DECIMALS.clear()
    number = _DECIMALS[value] = _to_decimal(value)
    return number


def _to_decimal(value: int | float | str) -> Decimal | None:
    try:
        if type(value) is int:
            number = Decimal(value)  # exact, and faster than through str
        else:
            number = Decimal(value.strip() if isinstance(value, str) else str(value))
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number.adjusted() > 15:
        return None
    return number.quantize(DECIMAL_PLACES)


def _check_lines(
    raw_lines: Any, rules: Rules, corrections: list[str]
) -> tuple[list[Item], list[LineProblem]]:
    if not isinstance(raw_lines, list):
        raise _Reject("schema", "items: must be a list of lines")
    if len(raw_lines) > rules.max_items:
        raise _Reject(
            "too_many_items",
            f"{len(raw_lines)} lines; the limit is {rules.max_items} (PATRONAGE_MAX_ITEMS)",
        )
    kept: list[Item] = []
    dropped: list[LineProblem] = []
    for index, line in enumerate(raw_lines):
        try:
            item = _check_line(line, index, rules, corrections)
        except _Reject as rej:
            dropped.append(LineProblem(index, rej.code, rej.reason, line))
            continue
        if item is not None:
            kept.append(item)
    return kept, dropped


def _check_line(line: Any, index: int, rules: Rules, corrections: list[str]) -> Item | None:
    # (each reason names its line as f"items.{index}", built only when refused)
    if not isinstance(line, dict):
        raise _Reject("line_not_an_object", f"items.{index} must be an object")
    category = free_label(line.get("category"), "category", corrections)
    quantity = _usable_decimal(line.get("quantity"))
    price = _usable_decimal(line.get("unit_price"))
    if quantity is None:
        raise _Reject("line_quantity", f"items.{index}.quantity is not a usable number")
    if price is None:
        raise _Reject("line_price", f"items.{index}.unit_price is not a usable number")
    sku = line.get("sku")
    if type(sku) is str and _storable_as_sent(sku):
        # What Item's validation would accept unchanged (category, quantity
        # and price are checked above): built without it, at a third of the cost.
        item = _line_item(sku, category, quantity, price)
    else:
        try:
            item = Item.model_validate(
                {**line, "category": category, "quantity": quantity, "unit_price": price}
            )
        except ValidationError as exc:
            raise _Reject("line_schema", _describe(exc, "line").replace("line: ", "", 1)) from exc
        quantity, price = item.quantity, item.unit_price
    _check_amounts(quantity, price, index, rules)
    if quantity == 0:
        corrections.append("zero_quantity_line_dropped")
        return None
    if not item.category:
        corrections.append("missing_category")
        item = item.model_copy(update={"category": "uncategorized"})
    return item


def _amounts_usable(quantity: Decimal, price: Decimal, rules: Rules) -> bool:
    return -rules.max_quantity <= quantity <= rules.max_quantity and (
        0 <= price <= rules.max_unit_price
    )


def _check_amounts(quantity: Decimal, price: Decimal, index: int, rules: Rules) -> None:
    if _amounts_usable(quantity, price, rules):
        return
    if not -rules.max_quantity <= quantity <= rules.max_quantity:
        raise _Reject(
            "absurd_quantity",
            f"items.{index}.quantity {quantity} exceeds ±{rules.max_quantity} "
            "(PATRONAGE_MAX_QUANTITY)",
        )
    if price < 0:
        raise _Reject("negative_price", f"items.{index}.unit_price is negative")
    if price > rules.max_unit_price:
        raise _Reject(
            "absurd_price",
            f"items.{index}.unit_price {price} exceeds {rules.max_unit_price} "
            "(PATRONAGE_MAX_UNIT_PRICE)",
        )


_ITEM_FIELDS = frozenset(Item.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def _line_item(sku: str, category: str | None, quantity: Decimal, unit_price: Decimal) -> Item:
    """An Item from values already valid for it."""
    values = {"sku": sku, "category": category, "quantity": quantity, "unit_price": unit_price}
    # A set of its own, as validation gives it: model_copy updates it in place.
    return _built(Item, values, set(_ITEM_FIELDS))


def _built(model: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """A model from values already valid for it, every field in `values` in
    declaration order, set as `model_construct` sets them (it costs more
    than validating)."""
    built = _new_object(model)
    _set_attribute(built, "__dict__", values)
    _set_attribute(built, "__pydantic_fields_set__", fields_set)
    _set_attribute(built, "__pydantic_extra__", None)
    _set_attribute(built, "__pydantic_private__", None)
    return built


def _settle_basket(
    event: Purchase | StoreReceipt,
    kept: list[Item],
    dropped: list[LineProblem],
    claimed_total: Decimal | None,
    rules: Rules,
    corrections: list[str],
) -> Purchase | StoreReceipt:
    if event.currency not in rules.currencies:
        known = ", ".join(sorted(rules.currencies))
        raise _Reject(
            "unknown_currency",
            f"currency {event.currency} is not configured ({known}; PATRONAGE_CURRENCIES)",
        )
    if not kept:
        if dropped:
            problems = "; ".join(p.reason for p in dropped[:3])
            raise _Reject("no_usable_lines", f"no usable item line: {problems}")
        raise _Reject("empty_basket", "no item lines with a non-zero quantity")
    item_sum = sum((i.unit_price * i.quantity for i in kept), Decimal(0))
    _check_total(item_sum, claimed_total, bool(dropped), rules, corrections)
    # Items and total as kept: what `model_copy(update=...)` gives, built
    # without its generic copying (both values are checked; no extras kept).
    values = {**event.__dict__, "items": kept, "total": item_sum}
    return _built(type(event), values, event.__pydantic_fields_set__ | _SETTLED)


_SETTLED = frozenset(("items", "total"))


def _check_total(
    item_sum: Decimal,
    claimed_total: Decimal | None,
    lines_dropped: bool,
    rules: Rules,
    corrections: list[str],
) -> None:
    if claimed_total is None:
        corrections.append("total_unusable")
    elif not lines_dropped and abs(item_sum - claimed_total) > rules.total_tolerance:
        # A till or shop rounding/summing bug: trust the lines, count it.
        corrections.append("total_mismatch")


_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,6}")


def _check_attributes(
    event: CustomerAttributes, ts_ms: int, corrections: list[str]
) -> CustomerAttributes:
    cleaned: dict[str, AttributeValue] = {}
    changed = False  # nothing to copy when every value is kept as sent (most events)
    for name, sent in event.attributes.items():
        accepted = KNOWN_ATTRIBUTES.get(name)
        if accepted is None:
            corrections.append("unknown_attribute_dropped")
            changed = True
            continue
        if sent is None:
            cleaned[name] = None  # an explicit null clears the attribute
            continue
        value = _coerce_attribute(sent, accepted, corrections)
        if value is None:
            corrections.append("attribute_type_dropped")
            changed = True
            continue
        if name == "birth_year" and not (1900 <= int(value) <= _year_of(ts_ms)):
            corrections.append("attribute_range_dropped")
            changed = True
            continue
        if name == "children" and not (0 <= int(value) <= 30):
            corrections.append("attribute_range_dropped")
            changed = True
            continue
        changed = changed or value is not sent
        cleaned[name] = value
    if not cleaned:
        raise _Reject("no_known_attributes", "no known attribute with a usable value")
    return event.model_copy(update={"attributes": cleaned}) if changed else event


def _year_of(ts_ms: int) -> int:
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=UTC).year


def _coerce_attribute(
    value: AttributeValue, accepted: tuple[type, ...], corrections: list[str]
) -> AttributeValue:
    """The value in an accepted type, or None when it has none."""
    if isinstance(value, bool):
        return value if bool in accepted else None
    if int in accepted:
        # Only ASCII digits: "²" and "٣" are digits to str.isdigit() but not years.
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            corrections.append("attribute_coerced")
            return int(value.strip())
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
            corrections.append("attribute_coerced")
            return int(value)
    if not isinstance(value, accepted):
        return None
    if isinstance(value, str):
        value = value.strip()[:64]
        if text_problem(value):
            return None
    return value
