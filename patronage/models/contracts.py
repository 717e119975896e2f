"""Wire contracts: the JSON events shops publish and the outputs we emit.

Times leave this module as integer epoch milliseconds (UTC). Extra fields are
ignored so producers can add fields before we read them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

UTC = dt.UTC


class PageType(StrEnum):
    home = "home"
    category = "category"
    product = "product"
    search = "search"
    cart = "cart"
    checkout = "checkout"
    other = "other"


class Channel(StrEnum):
    email = "email"
    social = "social"
    search = "search"
    ads = "ads"
    direct = "direct"
    other = "other"


def parse_ts(value: Any, default_zone: dt.tzinfo = UTC) -> int:
    """RFC 3339 (naive read in `default_zone`) or epoch milliseconds -> epoch ms."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or epoch milliseconds, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("ts is not a finite number")
        if not value.is_integer():
            raise ValueError("ts as a number must be whole epoch milliseconds")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("ts is empty")
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not RFC 3339") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=default_zone)
        return int(parsed.timestamp() * 1000)
    raise ValueError(
        f"ts must be an RFC 3339 string or epoch milliseconds, got {type(value).__name__}"
    )


def format_ts(epoch_ms: int) -> str:
    """Epoch ms -> RFC 3339 UTC with millisecond precision."""
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


MAX_ID_LENGTH = 128


# C0 and C1 control characters, and UTF-16 surrogates (which a JSON "\\ud800"
# escape yields alone): one C-speed scan per string on the hot path.
_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored or keyed as it is, or None if it can.

    JSON allows lone surrogates ("\\ud800") and control characters; neither
    survives UTF-8 encoding into Redis and Lua, so they are refused here rather
    than raising deep in the apply path."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if "\ud800" <= found.group() <= "\udfff":
        return "is not valid Unicode (a lone surrogate)"
    return "contains control characters"


def _clean_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    value = value.strip()
    problem = text_problem(value)
    if problem:
        raise ValueError(f"text {problem}")
    return value


def _customer_key(value: Any) -> Any:
    value = _clean_text(value)
    if isinstance(value, str) and ("{" in value or "}" in value):
        # Customer ids become Redis hash tags ({id}): a brace would split the tag.
        raise ValueError("customer_id must not contain { or }")
    return value


# The length limits come before the cleaning validator so that pydantic checks
# them in its own core after the validator ran: placed after it, they were
# Python functions, two more calls per field per event.
Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), BeforeValidator(_clean_text)]
CustomerId = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_LENGTH), BeforeValidator(_customer_key)
]
ShortText = Annotated[str, Field(max_length=MAX_ID_LENGTH), BeforeValidator(_clean_text)]


class _Timed(BaseModel):
    """An input record: an id and a time."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Ident
    # Kept raw here; validation turns it into epoch ms with the configured zone.
    ts: int | float | str

    @field_validator("ts", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("ts must be an RFC 3339 string or epoch milliseconds")
        return value


IdentifierKind = Literal[
    "anonymous_id", "loyalty_card", "email_sha256", "phone_sha256", "app_install_id"
]
# Identifiers are keyed "<kind>:<value>" beside customer ids (the profile of
# a cookie seen without a customer id, the identity graph's nodes): a
# customer id may not take that shape.
IDENTIFIER_PREFIXES = tuple(f"{kind}:" for kind in get_args(IdentifierKind))


def _identified_by_any(schema: dict[str, Any]) -> None:
    # The JSON Schema says what the validator below checks.
    names = [
        n for n in ("customer_id", "anonymous_id", "loyalty_card") if n in schema["properties"]
    ]
    schema["anyOf"] = [{"required": [name]} for name in names]


def not_an_identifier_key(value: str | None) -> str | None:
    if value is not None and value.startswith(IDENTIFIER_PREFIXES):
        kind = value.partition(":")[0]
        raise ValueError(f"customer_id must not start with {kind}: (an identifier's key)")
    return value


def routing_key(doc: Mapping[str, Any]) -> str | None:
    """The key to publish an event under: its profile's id (as `profile_id`
    decides it: customer id, else cookie, else card) or, for a link, its
    customer; None when it has none."""
    customer, cookie, card = (doc.get(n) for n in ("customer_id", "anonymous_id", "loyalty_card"))
    return identity_key(
        customer if isinstance(customer, str) else None,
        cookie if isinstance(cookie, str) else None,
        card if isinstance(card, str) else None,
    )


def identity_key(customer_id: str | None, anonymous_id: str | None, card: str | None) -> str | None:
    """Whose profile: the customer's id, else the cookie's key, else the card's."""
    if customer_id is not None:
        return customer_id
    if anonymous_id is not None:
        return "anonymous_id:" + anonymous_id
    if card is not None:
        return "loyalty_card:" + card
    return None


class _Event(_Timed):
    """An event of a customer, or of an identifier not (yet) linked to one:
    a click with only a cookie's `anonymous_id`, a till receipt with only a
    `loyalty_card`. The profile it builds is `profile_id`'s."""

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra=_identified_by_any)

    customer_id: CustomerId | None = None
    anonymous_id: CustomerId | None = None

    @field_validator("customer_id")
    @classmethod
    def _not_an_identifier_key(cls, value: str | None) -> str | None:
        return not_an_identifier_key(value)

    @model_validator(mode="after")
    def _identified(self) -> _Event:
        self._profile_id()
        return self

    def _profile_id(self) -> str:
        # __dict__, not getattr: on an event without the field, pydantic's
        # __getattr__ raises and catches an AttributeError. No mapping built
        # as for routing_key: this runs twice per event.
        card: str | None = self.__dict__.get("loyalty_card") or None
        key = identity_key(self.customer_id, self.anonymous_id, card)
        if key is None:
            raise ValueError(
                "customer_id or anonymous_id is required (or a receipt's loyalty_card)"
            )
        if key.startswith("loyalty_card:") and ("{" in key or "}" in key):
            raise ValueError("loyalty_card, the only identifier, must not contain { or }")
        return key

    @property
    def profile_id(self) -> str:
        """Whose profile the event builds: the customer's; without one, its
        identifier's (a customer id beats a cookie, a cookie beats a card)."""
        return self._profile_id()


class Click(_Event):
    session_id: Ident
    page_type: PageType
    product_id: ShortText | None = None
    category: ShortText | None = None
    channel: Channel | None = None
    device: ShortText | None = None


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: Ident
    category: ShortText | None = None
    # Decimal: weighed goods (0.532 kg) and fuel (41.27 l) are sold by measure.
    quantity: Decimal = Field(allow_inf_nan=False)
    unit_price: Decimal = Field(allow_inf_nan=False)  # pydantic refuses booleans here


class _Basket(_Event):
    items: list[Item]
    total: Decimal = Field(allow_inf_nan=False)
    currency: Annotated[
        str, BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v)
    ]
    payment_method: ShortText | None = None

    @field_validator("currency")
    @classmethod
    def _iso_shape(cls, value: str) -> str:
        if len(value) != 3 or not value.isalpha() or not value.isascii():
            raise ValueError(f"currency {value!r} is not an ISO 4217 code")
        return value


class Purchase(_Basket):
    order_id: Ident
    channel: Channel | None = None


class StoreReceipt(_Basket):
    receipt_id: Ident
    store_id: Ident
    loyalty_card: ShortText | None = None


AttributeValue = str | int | float | bool | None


class CustomerAttributes(_Event):
    attributes: dict[str, AttributeValue]


class Identifier(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: IdentifierKind
    # Keyed in Redis like a customer id (a hash tag): no braces.
    value: CustomerId


class IdentityEvent(_Timed):
    """On the `identities` topic: an identifier is (`link`) or is no longer
    (`unlink`) one of a customer's. The merge it drives is models/identity.py."""

    customer_id: CustomerId
    type: Literal["link", "unlink"]
    identifier: Identifier

    @field_validator("customer_id")
    @classmethod
    def _not_an_identifier_key(cls, value: str) -> str:
        not_an_identifier_key(value)
        return value


EventKind = Literal["click", "purchase", "store_receipt", "customer_attributes"]
Event = Click | Purchase | StoreReceipt | CustomerAttributes
# For isinstance on the hot path (a `Purchase | StoreReceipt` union is built per call).
BASKET_EVENTS = (Purchase, StoreReceipt)

# Known attribute fields and the JSON types they accept; others are dropped
# (and counted) so a CRM export cannot grow a profile without bound.
KNOWN_ATTRIBUTES: dict[str, tuple[type, ...]] = {
    "birth_year": (int,),
    "gender": (str,),
    "marital_status": (str,),
    "children": (int,),
    "region": (str,),
    "postcode": (str,),
    "preferred_channel": (str,),
    "consent_email": (bool,),
    "consent_sms": (bool,),
    "consent_profiling": (bool,),
}


class IdentityChange(BaseModel):
    """On `identity-changes`: the identifiers that make one customer changed.
    A `merge` joins profiles (`previous` lists the canonical ids merged); a
    `split` is what an unlink leaves, one message per person left (an
    identifier left alone is a profile of its own again)."""

    model_config = ConfigDict(frozen=True)

    event_id: str  # identity:<customer_id>:<cause>: one per person per link event
    customer_id: str  # the canonical customer id (or an identifier's key)
    ts: str  # the link or unlink's time
    kind: Literal["merge", "split"]
    identifiers: list[str]  # every member: customer ids and "<kind>:<value>"
    previous: list[str]  # the canonical ids the members had before
    cause: str  # the event_id of the link or unlink


class SegmentChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    customer_id: str
    ts: str
    kind: Literal["segment"] = "segment"  # beside `tier` changes on the same topic
    previous_segment: int | None
    segment: int
    segment_label: str
    model_version: int
    reason: Literal["profile", "model_update"]


class TierChange(BaseModel):
    """A customer's value tier moved (on `segment-changes`, told apart from a
    SegmentChange by `kind`)."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    customer_id: str
    ts: str
    kind: Literal["tier"] = "tier"
    previous_tier: Literal["best", "regular", "low_value"] | None
    tier: Literal["best", "regular", "low_value"]
    predicted_clv_365d: float
    parameters_version: int
    reason: Literal["profile", "refit"]


class RiskAlert(BaseModel):
    """A buyer's probability of still being a customer fell below the
    threshold with no purchase since (on `lapse-alerts`, `kind` "at_risk")."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    customer_id: str
    ts: str  # the moment p_alive crossed the threshold
    kind: Literal["at_risk"] = "at_risk"
    last_order_at: str
    p_alive: float
    threshold: float
    expected_orders_90d: float
    predicted_clv_365d: float
    segment: int | None
    parameters_version: int


class LapseAlert(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    customer_id: str
    ts: str
    kind: Literal["lapsed", "reactivated"]
    last_seen: str
    days_since_last_visit: float
    usual_gap_days: float
    value_at_risk: float
    segment: int | None


class DeadLetter(BaseModel):
    """What lands on events-dlq: enough to inspect, fix and republish."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    source_topic: str
    partition: int
    offset: int
    reason: str
    error: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    # The payload is cut past a setting so a letter always fits the broker's
    # message limit; length and digest identify the original.
    payload_bytes: int
    payload_sha256: str
    payload_truncated: bool
    detected_at: str
    # Set when one line of a receipt was dropped and the rest kept.
    line: int | None = None
