"""Deterministic shop/till event streams from hidden personas.

Same seed -> same events. Time is an argument (`start_ms`); nothing reads the
clock. Used by `make demo`, the integration tests and the benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from patronage.models.timeunits import DAY_MS

CATEGORIES = (
    "fresh_food",
    "grocery",
    "drinks",
    "household",
    "beauty",
    "baby",
    "electronics",
    "fashion",
    "home",
    "garden",
    "toys",
    "sports",
)


@dataclass(frozen=True)
class Persona:
    name: str
    gap_days: float  # mean days between visits
    store_share: float  # share of visits in a store
    buy_prob: float  # chance an online visit ends in a purchase
    basket_lines: tuple[int, int]
    price: tuple[float, float]
    categories: tuple[str, ...]
    return_prob: float = 0.02


PERSONAS = (
    Persona(
        "weekly_store",
        7,
        0.9,
        0.5,
        (8, 20),
        (1.0, 8.0),
        ("fresh_food", "grocery", "drinks", "household"),
    ),
    Persona("online_browser", 4, 0.0, 0.05, (1, 2), (10.0, 80.0), ("electronics", "fashion")),
    Persona(
        "omnichannel_vip",
        5,
        0.5,
        0.7,
        (4, 10),
        (15.0, 90.0),
        ("fashion", "beauty", "home", "electronics"),
    ),
    Persona(
        "bargain_hunter", 10, 0.3, 0.6, (2, 5), (1.0, 10.0), ("grocery", "household", "toys"), 0.15
    ),
    Persona("one_off", 1000, 0.5, 1.0, (1, 3), (5.0, 40.0), CATEGORIES),
)


def generate(
    customers: int,
    days: int,
    seed: int,
    start_ms: int,
    lapse_share: float = 0.2,
    attribute_share: float = 0.6,
    return_share: float = 0.4,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Events (each with a 'type') in time order, and customer -> persona."""
    rng = random.Random(seed)
    events: list[tuple[int, int, dict[str, Any]]] = []
    personas: dict[str, str] = {}
    seq = 0

    def emit(ts: int, event: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        event["event_id"] = f"ev-{seed}-{seq}"
        event["ts"] = ts
        events.append((ts, seq, event))

    end_ms = start_ms + days * DAY_MS
    for index in range(customers):
        persona = PERSONAS[rng.randrange(len(PERSONAS))]
        customer_id = f"c{index:06d}"
        personas[customer_id] = persona.name
        stop_ms = end_ms
        resume_ms = end_ms
        if persona.name != "one_off" and rng.random() < lapse_share:
            stop_ms = start_ms + int(rng.uniform(0.5, 0.85) * days * DAY_MS)
            if rng.random() < return_share:  # a pause, then back to their rhythm
                resume_ms = stop_ms + int(rng.uniform(5, 8) * persona.gap_days * DAY_MS)
        t = start_ms + int(rng.uniform(0, min(persona.gap_days, days / 3)) * DAY_MS)
        if persona.name == "one_off":
            t = start_ms + int(rng.uniform(0, days) * DAY_MS)
        if rng.random() < attribute_share:
            emit(min(t, end_ms - 1), _attributes(rng, customer_id))
        _visits(rng, persona, customer_id, t, (stop_ms, resume_ms, end_ms), emit)
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events], personas


def _attributes(rng: random.Random, customer_id: str) -> dict[str, Any]:
    return {
        "type": "customer_attributes",
        "customer_id": customer_id,
        "attributes": {
            "birth_year": rng.randint(1945, 2005),
            "gender": rng.choice(["f", "m", "x"]),
            "region": rng.choice(["north", "south", "east", "west"]),
            "consent_email": rng.random() < 0.7,
        },
    }


def _visits(
    rng: random.Random,
    persona: Persona,
    customer_id: str,
    t: int,
    window: tuple[int, int, int],
    emit: Any,
) -> None:
    """A customer's visits from `t`: away from stop to resume, none past end."""
    stop_ms, resume_ms, end_ms = window
    session = 0
    visits_left = 1 if persona.name == "one_off" else 10_000
    while t < end_ms and visits_left > 0:
        if stop_ms <= t < resume_ms:
            t = resume_ms
            continue
        if t >= stop_ms and resume_ms >= end_ms:
            break
        visits_left -= 1
        if rng.random() < persona.store_share:
            _store_visit(rng, persona, customer_id, t, emit)
        else:
            session += 1
            _online_visit(rng, persona, customer_id, f"{customer_id}-s{session}", t, emit)
        t += int(max(0.5, rng.gauss(persona.gap_days, persona.gap_days * 0.25)) * DAY_MS)


def _basket(rng: random.Random, persona: Persona) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for _ in range(rng.randint(*persona.basket_lines)):
        quantity = rng.randint(1, 3)
        if rng.random() < persona.return_prob:
            quantity = -quantity
        lines.append(
            {
                "sku": f"sku-{rng.randint(1, 5000)}",
                "category": rng.choice(persona.categories),
                "quantity": quantity,
                "unit_price": round(rng.uniform(*persona.price), 2),
            }
        )
    if all(item["quantity"] < 0 for item in lines):
        lines[0]["quantity"] = -lines[0]["quantity"]
    return lines


def _total(items: list[dict[str, Any]]) -> float:
    return round(float(sum(i["quantity"] * i["unit_price"] for i in items)), 2)


def _store_visit(rng: random.Random, persona: Persona, customer_id: str, t: int, emit: Any) -> None:
    items = _basket(rng, persona)
    emit(
        t + rng.randint(9, 19) * 3_600_000,
        {
            "type": "store_receipt",
            "customer_id": customer_id,
            "receipt_id": f"r-{customer_id}-{t}",
            "store_id": f"store-{rng.randint(1, 12)}",
            "items": items,
            "total": _total(items),
            "currency": "EUR",
            "payment_method": rng.choice(["card", "cash", "mobile"]),
            "loyalty_card": f"L{customer_id}",
        },
    )


def _online_visit(
    rng: random.Random, persona: Persona, customer_id: str, session_id: str, t: int, emit: Any
) -> None:
    t += rng.randint(7, 22) * 3_600_000
    channel = rng.choice(["email", "social", "search", "ads", "direct"])
    device = rng.choice(["mobile", "desktop", "tablet"])
    pages = ["home"] + [
        rng.choice(["category", "product", "search"]) for _ in range(rng.randint(1, 5))
    ]
    buys = rng.random() < persona.buy_prob
    if buys:
        pages += ["cart", "checkout"]
    for step, page in enumerate(pages):
        emit(
            t + step * 40_000,
            {
                "type": "click",
                "customer_id": customer_id,
                "session_id": session_id,
                "page_type": page,
                "category": rng.choice(persona.categories),
                "channel": channel,
                "device": device,
            },
        )
    if buys:
        items = _basket(rng, persona)
        emit(
            t + len(pages) * 40_000,
            {
                "type": "purchase",
                "customer_id": customer_id,
                "order_id": f"o-{session_id}",
                "items": items,
                "total": _total(items),
                "currency": "EUR",
                "payment_method": rng.choice(["card", "paypal", "klarna"]),
                "channel": channel,
            },
        )


BAD_VARIANTS = (
    "missing_customer",
    "unknown_currency",
    "future_ts",
    "absurd_quantity",
    "bad_customer_id",
    "wrong_types",
)


IDENTITY_TYPES = ("link", "unlink")


def simulated_stream(
    customers: int, days: int, seed: int, start_ms: int, identities: bool = True
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What `patronage events simulate` sends: the personas' events and, with
    `identities`, as identifiers see them (cookies before login, card-only
    receipts; `stitched`) with the links and unlinks among them in time order."""
    events, personas = generate(customers, days, seed, start_ms)
    if not identities:
        return events, personas
    world = stitched(events, seed)
    merged = sorted(
        [*world.events, *world.identities], key=lambda e: (e["ts"], e["type"] in IDENTITY_TYPES)
    )
    return merged, personas


def with_bad_events(
    events: list[dict[str, Any]], rate: float, seed: int
) -> list[dict[str, Any] | str]:
    """Insert bad events (dicts that break the contract, or raw non-JSON text)
    after a `rate` share of the events; deterministic by seed."""
    rng = random.Random(seed * 7919 + 1)
    out: list[dict[str, Any] | str] = []
    for n, event in enumerate(events):
        out.append(event)
        if rate <= 0 or event["type"] in IDENTITY_TYPES or rng.random() >= rate:
            continue
        variant = BAD_VARIANTS[rng.randrange(len(BAD_VARIANTS))]
        bad = dict(event)
        bad["event_id"] = f"bad-{seed}-{n}"
        if variant == "missing_customer":
            # No identifier at all (a card alone would identify a receipt).
            for name in ("customer_id", "anonymous_id", "loyalty_card"):
                bad.pop(name, None)
        elif variant == "unknown_currency" and "currency" in bad:
            bad["currency"] = "XXX"
        elif variant == "future_ts":
            bad["ts"] = event["ts"] + 400 * DAY_MS
        elif variant == "absurd_quantity" and "items" in bad:
            bad["items"] = [{**bad["items"][0], "quantity": 10**6}]
        elif variant == "bad_customer_id" or "items" not in bad:
            # Braces would split the Redis hash tag the id becomes.
            bad["customer_id"] = "{" + str(bad.get("customer_id")) + "}"
        if variant == "wrong_types":
            bad["customer_id"] = 12345
            bad["ts"] = [bad["ts"]]
        out.append(bad)
    return out


def to_jsonl(events: list[dict[str, Any]] | list[dict[str, Any] | str]) -> str:
    return "".join(
        (e if isinstance(e, str) else json.dumps(e, sort_keys=True, separators=(",", ":"))) + "\n"
        for e in events
    )


@dataclass(frozen=True)
class Stitched:
    """A population as identifiers see it (issue #16): events, the links and
    unlinks the shop's login and loyalty systems send, and the truth."""

    events: list[dict[str, Any]]
    identities: list[dict[str, Any]]  # "link"/"unlink" events, in time order
    person_of: dict[str, str]  # every profile key -> the true customer
    wrong: list[tuple[str, str]]  # (customer, identifier key) linked by mistake, undone


def stitched(
    events: list[dict[str, Any]],
    seed: int,
    anonymous_share: float = 0.15,
    card_share: float = 0.5,
    wrong_share: float = 0.2,
) -> Stitched:
    """The same visits as identifiers see them: online visitors browse under a
    cookie until they log in (the login session spans both: its later clicks
    carry the account and the cookie); `anonymous_share` of visitors never log
    in (guest checkout); `card_share` of store shoppers pay with a loyalty card
    for months before registering it; a few links join a customer to a guest's
    cookie by mistake (a shared tablet: `wrong_share` of guests) and are
    unlinked days later."""
    rng = random.Random(seed * 104_729 + 3)
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_customer.setdefault(event["customer_id"], []).append(event)
    out: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    person_of: dict[str, str] = {}
    guests: list[str] = []

    def link(kind: str, customer: str, identifier: tuple[str, str], ts: int) -> None:
        links.append(
            {
                "type": kind,
                "event_id": f"{kind}-{seed}-{len(links)}",
                "customer_id": customer,
                "identifier": {"kind": identifier[0], "value": identifier[1]},
                "ts": ts,
            }
        )

    for customer, own in by_customer.items():
        person_of[customer] = customer
        cookie = f"{rng.getrandbits(128):032x}"
        guest, login_at, card_at = _identified_at(rng, own, anonymous_share, card_share)
        for event in own:
            event = dict(event)
            if event["type"] in ("click", "purchase") and (guest or login_at is not None):
                if guest or event["ts"] < login_at:
                    del event["customer_id"]
                event["anonymous_id"] = cookie
            if event["type"] == "store_receipt" and card_at is not None and event["ts"] < card_at:
                del event["customer_id"]  # paid with the card, not yet registered
            out.append(event)
        if guest:
            guests.append(f"anonymous_id:{cookie}")
            person_of[f"anonymous_id:{cookie}"] = f"anonymous_id:{cookie}"
        if login_at is not None:
            link("link", customer, ("anonymous_id", cookie), login_at)
            person_of[f"anonymous_id:{cookie}"] = customer
        if card_at is not None:
            link("link", customer, ("loyalty_card", f"L{customer}"), card_at)
            person_of[f"loyalty_card:L{customer}"] = customer
    wrong = _wrong_links(rng, out, guests, sorted(by_customer), wrong_share, link)
    out.sort(key=lambda e: (e["ts"], e["event_id"]))
    links.sort(key=lambda e: (e["ts"], e["event_id"]))
    return Stitched(out, links, person_of, wrong)


def _identified_at(
    rng: random.Random, own: list[dict[str, Any]], anonymous_share: float, card_share: float
) -> tuple[bool, int | None, int | None]:
    """Whether a customer stays a guest online, when they log in, when they
    register their loyalty card (None: never)."""
    online = [e for e in own if e["type"] in ("click", "purchase")]
    guest = bool(online) and rng.random() < anonymous_share
    login_at = None
    if online and not guest:
        # Logged in at the first checkout, or at a session some way in.
        bought = [e["ts"] for e in online if e["type"] == "purchase"]
        clicks = sorted(e["ts"] for e in online if e["type"] == "click")
        cut = [clicks[rng.randrange(len(clicks))]] if clicks else []
        login_at = min([*bought, *cut], default=None)
    receipts = [e for e in own if e["type"] == "store_receipt"]
    card_at = None
    if receipts and rng.random() < card_share:
        card_at = receipts[min(len(receipts) - 1, rng.randint(1, 4))]["ts"]
    return guest, login_at, card_at


def _wrong_links(
    rng: random.Random,
    events: list[dict[str, Any]],
    guests: list[str],
    customers: list[str],
    share: float,
    link: Any,
) -> list[tuple[str, str]]:
    """A share of guests' cookies linked to a random customer (a shared
    tablet in a store), unlinked three days later."""
    wrong = []
    for guest_key in guests:
        if customers and rng.random() < share:
            customer = rng.choice(customers)
            cookie = guest_key.partition(":")[2]
            at = min(e["ts"] for e in events if e.get("anonymous_id") == cookie)
            link("link", customer, ("anonymous_id", cookie), at + 3_600_000)
            link("unlink", customer, ("anonymous_id", cookie), at + 3 * DAY_MS)
            wrong.append((customer, guest_key))
    return wrong
