"""The merge of partial profiles (models/identity.py): its laws by hypothesis,
"merge of parts == profile of all events", and undoing a link."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronage.models.identity import (
    IdentityGraph,
    Limits,
    LinkEvent,
    holds_for_person,
    merge,
    merge_all,
)
from patronage.models.lapse import Finding
from patronage.models.layout import OTHER
from patronage.models.profile import (
    DAY_MS,
    Delta,
    ProfileConfig,
    ProfileState,
    fold,
    profile_view,
    short_hash,
    token,
)
from tests.compare import assert_views_close

CFG = ProfileConfig(record_orders=True)
T0 = 1_767_225_600_000  # 2026-01-01
PAYMENTS = ["girocard", "paypal", "visa", "klarna"]
CATEGORIES = ["Molkereiprodukte", "Backwaren", "Getränke", "Haushalt", "Spielwaren"]


@st.composite
def person_events(draw: st.DrawFn) -> list[tuple[int, Delta]]:
    """One person's events, each under one of four identifiers (0: the
    customer id, 1: a cookie, 2: a loyalty card, 3: an app install): online
    orders, store receipts with natural keys, clicks whose sessions can span
    a login (the same session under the cookie and the customer id), and
    attribute updates."""
    events = []
    for i in range(draw(st.integers(1, 30))):
        who = draw(st.integers(0, 3))
        t = T0 + draw(st.integers(0, 300 * DAY_MS))
        kind = draw(st.sampled_from(["order", "receipt", "click", "attributes"]))
        base: dict[str, Any] = {
            "source": f"in:{i}",  # one partition each: any order is a legal delivery
            "offset": i,
            "event_token": token(f"ev-{i}"),
            "ts": t,
            "day": t // DAY_MS,
        }
        if kind in ("order", "receipt"):
            basket = draw(st.sampled_from([4.99, 12.5, 23.0, 79.9, 149.0]))
            returned = draw(st.sampled_from([0.0, 0.0, 2.5]))
            delta = Delta(
                **base,
                kind="order",
                origin="store" if kind == "receipt" else "online",
                basket=basket,
                returned=returned,
                net=basket - returned,
                categories=((draw(st.sampled_from(CATEGORIES)), basket - returned),),
                payment_method=draw(st.sampled_from(PAYMENTS)),
                order_token=token(f"order-{i}"),
            )
        elif kind == "click":
            session = draw(st.integers(0, 6))
            delta = Delta(
                **base,
                kind="click",
                session_token=short_hash(f"s{session}"),
                channel=draw(st.sampled_from(["email", "seo", None])),
                device=draw(st.sampled_from(["mobile", "desktop"])),
            )
        else:
            value = draw(st.sampled_from(['"10115"', '"80331"', "1984", "true"]))
            name = draw(st.sampled_from(["postcode", "birth_year", "consent_email"]))
            delta = Delta(**base, kind="attributes", attributes=((name, value),))
        events.append((who, delta))
    return events


def parts_of(events: list[tuple[int, Delta]]) -> list[ProfileState]:
    return [fold([d for who, d in events if who == part], CFG) for part in range(4)]


def assert_same_profile(a: ProfileState, b: ProfileState) -> None:
    """The same customer: the view (floats within rounding), visit days,
    sessions, dedupe state and the lapse and at-risk buffers."""
    assert_views_close(profile_view("p", a.fields), profile_view("p", b.fields))
    assert a.days == b.days
    assert a.sessions == b.sessions
    assert set(a.order_keys) == set(b.order_keys)
    assert {t for t, _ in a.eids} == {t for t, _ in b.eids}
    assert a.edges == b.edges
    assert sorted(a.risk_orders.split(";")) == sorted(b.risk_orders.split(";"))


@settings(max_examples=120, deadline=None)
@given(person_events())
def test_the_merge_of_the_parts_is_the_profile_of_all_events(
    events: list[tuple[int, Delta]],
) -> None:
    assert_same_profile(merge_all(parts_of(events), CFG), fold([d for _, d in events], CFG))


@settings(max_examples=100, deadline=None)
@given(person_events(), person_events())
def test_merge_is_commutative(
    first: list[tuple[int, Delta]], second: list[tuple[int, Delta]]
) -> None:
    a, b = fold([d for _, d in first], CFG), fold([d for _, d in second], CFG)
    assert_same_profile(merge(a, b, CFG), merge(b, a, CFG))


@settings(max_examples=100, deadline=None)
@given(person_events())
def test_merge_is_associative_with_the_empty_profile_as_identity(
    events: list[tuple[int, Delta]],
) -> None:
    a, b, c, _ = parts_of(events)
    assert_same_profile(merge(merge(a, b, CFG), c, CFG), merge(a, merge(b, c, CFG), CFG))
    assert_same_profile(merge(a, ProfileState(), CFG), a)
    assert_same_profile(merge(ProfileState(), a, CFG), a)


@settings(max_examples=100, deadline=None)
@given(person_events(), st.integers(0, 3))
def test_unlinking_restores_the_canonical_profile_without_that_identifier(
    events: list[tuple[int, Delta]], unlinked: int
) -> None:
    """A wrong link undone: the canonical profile recomputed from the parts
    left is exactly the profile of their events, and no part was changed by
    having been merged."""
    parts = parts_of(events)
    before = [ProfileState(dict(p.fields), list(p.days), dict(p.sessions)) for p in parts]
    merge_all(parts, CFG)
    kept = [p for i, p in enumerate(parts) if i != unlinked]
    left = [d for who, d in events if who != unlinked]
    assert_same_profile(merge_all(kept, CFG), fold(left, CFG))
    assert [(p.fields, p.days, p.sessions) for p in parts] == [
        (p.fields, p.days, p.sessions) for p in before
    ]


def test_a_session_across_a_login_counts_once() -> None:
    def click(offset: int, session: str) -> Delta:
        return Delta(
            f"clicks:{offset}",
            offset,
            token(f"c{offset}"),
            T0,
            T0 // DAY_MS,
            "click",
            session_token=short_hash(session),
        )

    cookie = fold([click(0, "visit-1"), click(1, "visit-2")], CFG)
    account = fold([click(2, "visit-2"), click(3, "visit-3")], CFG)
    merged = merge(cookie, account, CFG)
    assert merged.fields["sessions"] == 3 and merged.fields["clicks"] == 4


def test_past_the_cap_the_largest_keys_stay_and_nothing_is_lost() -> None:
    cfg = ProfileConfig(map_cap=2)

    def order(offset: int, category: str, value: float) -> Delta:
        return Delta(
            f"p:{offset}",
            offset,
            token(f"o{offset}"),
            T0,
            T0 // DAY_MS,
            "order",
            origin="online",
            basket=value,
            net=value,
            categories=((category, value),),
        )

    a = fold([order(0, "Backwaren", 5.0), order(1, "Getränke", 30.0)], cfg)
    b = fold([order(2, "Haushalt", 12.0), order(3, "Backwaren", 2.0)], cfg)
    merged = merge(a, b, cfg).fields
    assert merged["cat:Getränke"] == 30.0 and merged["cat:Haushalt"] == 12.0
    assert merged[f"cat:{OTHER}"] == 7.0 and merged["#cat:"] == 2.0
    view = profile_view("p", merged)
    assert sum(view["categories"].values()) == 49.0  # type: ignore[union-attr]


def test_the_identities_contract() -> None:
    """Link and unlink events as a shop's login service or till would send
    them; an unknown identifier kind, a brace (it would split the Redis hash
    tag) or a missing identifier is refused with the field named."""
    import json
    from pathlib import Path

    import pytest
    from hypothesis_jsonschema import from_schema
    from pydantic import ValidationError

    from patronage.models.contracts import IdentityEvent

    link = IdentityEvent.model_validate_json(
        '{"type": "link", "event_id": "login-8812", "customer_id": "c-1042",'
        ' "identifier": {"kind": "anonymous_id", "value": "0b7f5c2e-3d41-4c8e-9a6b-52f1d0c7e913"},'
        ' "ts": "2026-11-30T09:41:07+01:00"}'
    )
    assert link.identifier.kind == "anonymous_id" and link.type == "link"
    card = IdentityEvent.model_validate(
        {
            "type": "unlink",
            "event_id": "crm-771",
            "customer_id": "c-1042",
            "identifier": {"kind": "loyalty_card", "value": "9276 0013 4417 02"},
            "ts": 1_796_000_000_000,
        }
    )
    assert card.identifier.value == "9276 0013 4417 02"
    for bad, field in (
        ({"kind": "cookie", "value": "x"}, "identifier.kind"),
        ({"kind": "loyalty_card", "value": "{9276}"}, "identifier.value"),
        (None, "identifier"),
    ):
        with pytest.raises(ValidationError) as error:
            IdentityEvent.model_validate({**card.model_dump(), "identifier": bad})
        assert field in str(error.value).replace("\n", ".").replace(" ", ""), error.value
    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "identity.schema.json").read_text()
    )

    @settings(max_examples=100, deadline=None)
    @given(from_schema(schema))
    def every_schema_document_is_handled(document: dict[str, Any]) -> None:
        # The schema is looser than the validators (braces, blank text): a
        # document is either read as it says or refused with the field named.
        try:
            event = IdentityEvent.model_validate(document)
        except ValidationError as error:
            assert all(e["loc"] for e in error.errors()), error
        else:
            assert event.type == document["type"]
            assert event.identifier.kind == document["identifier"]["kind"]

    every_schema_document_is_handled()


NODES = [("anonymous_id", f"cookie-{i}") for i in range(4)] + [
    ("loyalty_card", "9276001344"),
    ("email_sha256", "5d41402abc4b2a76b9719d911017c592"),
]


@st.composite
def link_events(draw: st.DrawFn) -> list[LinkEvent]:
    events = []
    for i in range(draw(st.integers(1, 25))):
        events.append(
            LinkEvent(
                draw(st.sampled_from(["link", "link", "unlink"])),
                draw(st.sampled_from(["c-1", "c-2", "c-3"])),
                draw(st.sampled_from(NODES)),
                T0 + draw(st.integers(0, 50)) * 3_600_000,
                f"id-{i}",
            )
        )
    return events


def graph_of(events: list[LinkEvent], limits: Limits) -> IdentityGraph:
    graph = IdentityGraph(limits)
    for event in events:
        graph.apply(event)
    return graph


@settings(max_examples=120, deadline=None)
@given(
    link_events(),
    st.randoms(use_true_random=False),
    st.sampled_from([Limits(20, 1), Limits(2, 2), Limits(20, 3)]),
)
def test_links_and_unlinks_in_any_order_and_redelivered_resolve_the_same(
    events: list[LinkEvent], rnd: random.Random, limits: Limits
) -> None:
    delivered = events + rnd.sample(events, k=len(events) // 2)  # redeliveries
    rnd.shuffle(delivered)
    once, shuffled = graph_of(events, limits), graph_of(delivered, limits)
    assert once.in_force() == shuffled.in_force()
    assert once.people() == shuffled.people()
    kept, _ = once.in_force()
    for customer in {e.customer_id for e in kept}:
        assert sum(1 for e in kept if e.customer_id == customer) <= limits.identifiers_per_customer
    for node in {e.identifier for e in kept}:
        assert sum(1 for e in kept if e.identifier == node) <= limits.customers_per_identifier


def test_a_shared_card_is_refused_and_an_unlink_splits_a_wrong_merge() -> None:
    card = ("loyalty_card", "guest-0001")
    graph = IdentityGraph(Limits(identifiers_per_customer=20, customers_per_identifier=2))
    for n, customer in enumerate(["c-1", "c-2", "c-3", "c-4"]):
        graph.apply(LinkEvent("link", customer, card, T0 + n, f"l{n}"))
    kept, refused = graph.in_force()
    assert [e.customer_id for e in kept] == ["c-1", "c-2"]
    assert set(refused) == {"l2", "l3"} and "already linked to 2 customers" in refused["l2"]
    # c-1 and c-2 share the card: one person, canonical c-1 ...
    assert graph.resolve(card) == "c-1" and graph.resolve(("customer_id", "c-2")) == "c-1"
    # ... until the wrong link is undone.
    assert graph.apply(LinkEvent("unlink", "c-2", card, T0 + 10, "u1"))
    assert graph.resolve(("customer_id", "c-2")) == "c-2"
    # c-3's link was refused while two held the card; it is the oldest now.
    assert graph.resolve(("customer_id", "c-3")) == "c-1"
    assert not graph.apply(LinkEvent("unlink", "c-2", card, T0 + 10, "u1"))  # redelivered
    assert not graph.apply(LinkEvent("link", "c-2", card, T0 + 5, "late"))  # older than the unlink
    assert graph.resolve(("anonymous_id", "never-linked")) == "anonymous_id:never-linked"


@settings(max_examples=80, deadline=None)
@given(person_events(), link_events())
def test_the_canonical_profile_is_the_merge_of_the_persons_parts(
    events: list[tuple[int, Delta]], links: list[LinkEvent]
) -> None:
    """Events under customer ids and identifiers, resolved through the
    links in force: each person's merged profile is the profile of the
    events of all their nodes."""
    graph = graph_of(links, Limits(20, 1))
    nodes = [("customer_id", "c-1"), NODES[0], NODES[4], ("customer_id", "c-2")]
    by_person: dict[str, list[Delta]] = {}
    parts: dict[str, list[ProfileState]] = {}
    for i, node in enumerate(nodes):
        mine = [d for who, d in events if who == i]
        person = graph.resolve(node)
        by_person.setdefault(person, []).extend(mine)
        parts.setdefault(person, []).append(fold(mine, CFG))
    for person, deltas in by_person.items():
        assert_same_profile(merge_all(parts[person], CFG), fold(deltas, CFG))


# (kind, episode day, finding day, the person's visit days) -> holds for the person
DAY = 86_400_000
PERSON_FINDINGS = [
    ("lapsed", 10, 30, [1, 5, 10], True),  # away since day 10
    ("lapsed", 10, 30, [1, 5, 10, 20], False),  # seen in store on day 20
    ("lapsed", 10, 30, [1, 5, 10, 30], False),  # seen on the lapse day itself
    ("lapsed", 10, 30, [1, 5, 10, 31], True),  # back only after the lapse
    ("reactivated", 10, 40, [1, 10, 40], True),  # away until the return
    ("reactivated", 10, 40, [1, 10, 25, 40], False),  # seen elsewhere meanwhile
    ("reactivated", 10, 40, [], True),
]


@pytest.mark.parametrize(("kind", "episode", "at", "days", "holds"), PERSON_FINDINGS)
def test_a_parts_lapse_holds_for_its_person_only_if_the_person_was_away(
    kind: str, episode: int, at: int, days: list[int], holds: bool
) -> None:
    finding = Finding(kind, episode * DAY + 3_600_000, at * DAY + 7_200_000, 7.0, 100.0, 60.0, None)  # type: ignore[arg-type]
    assert holds_for_person(finding, days, dt.UTC) is holds
