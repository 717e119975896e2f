"""Profile math: table cases, decay, returns, and order independence (hypothesis)."""

from __future__ import annotations

import datetime as dt
import math
import random
import zoneinfo
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronage.models.contracts import Click, Item, StoreReceipt
from patronage.models.profile import (
    DAY_MS,
    Delta,
    ProfileConfig,
    ProfileState,
    apply,
    day_index,
    fold,
    gap_stats,
    profile_view,
    short_hash,
    to_delta,
    token,
)
from tests.compare import assert_views_close

CFG = ProfileConfig()
T0 = 1_767_225_600_000  # 2026-01-01
DAY0 = T0 // DAY_MS


def order(
    off: int,
    day: float,
    basket: float = 10.0,
    returned: float = 0.0,
    origin: str = "online",
    cats: tuple[tuple[str, float], ...] = (),
    src: str = "purchases:0",
    eid: str | None = None,
) -> Delta:
    t = T0 + int(day * DAY_MS)
    return Delta(
        source=src,
        offset=off,
        event_token=eid or short_hash(f"{src}/{off}"),
        ts=t,
        day=t // DAY_MS,
        kind="order",
        origin=origin,
        basket=basket,
        returned=returned,
        net=basket - returned,
        categories=cats or (("food", basket - returned),),
        payment_method="card",
    )  # type: ignore[arg-type]


def click(off: int, day: float, session: str = "s1", src: str = "clicks:0") -> Delta:
    t = T0 + int(day * DAY_MS)
    return Delta(
        source=src,
        offset=off,
        event_token=short_hash(f"{src}/{off}"),
        ts=t,
        day=t // DAY_MS,
        kind="click",
        session_token=session,
        channel="email",
        device="mobile",
    )


def view(deltas: list[Delta], cfg: ProfileConfig = CFG) -> dict[str, object]:
    return profile_view("c1", fold(deltas, cfg).fields)


def test_single_order() -> None:
    v = view([order(0, 0, basket=30.0)])
    assert v["orders"] == 1 and v["orders_online"] == 1 and v["orders_store"] == 0
    assert v["spend_total"] == 30.0 and v["avg_basket"] == 30.0 and v["max_basket"] == 30.0
    assert v["visits"] == 1 and v["frequency_decayed"] == 1.0 and v["monetary_decayed"] == 30.0
    assert v["visit_gap_mean_days"] is None


def test_returns_reduce_spend_but_not_orders() -> None:
    v = view([order(0, 0, basket=50.0, returned=20.0, origin="store")])
    assert v["spend_total"] == 30.0 and v["spend_store"] == 30.0 and v["returns_value"] == 20.0
    assert v["orders"] == 1 and v["avg_basket"] == 50.0


def test_pure_return_is_a_visit_not_an_order() -> None:
    v = view([order(0, 0, basket=0.0, returned=15.0)])
    assert v["orders"] == 0 and v["spend_total"] == -15.0 and v["visits"] == 1


@pytest.mark.parametrize(
    ("days_apart", "expected_freq"),
    [(0, 2.0), (30, 1.5), (60, 1.25), (90, 1.125)],
)
def test_decay_halves_every_half_life(days_apart: int, expected_freq: float) -> None:
    v = view([order(0, 0), order(1, days_apart)])
    assert v["frequency_decayed"] is not None
    assert math.isclose(float(v["frequency_decayed"]), expected_freq, rel_tol=1e-12)  # type: ignore[arg-type]


def test_late_event_is_decayed_from_its_own_time() -> None:
    # Different partitions: Kafka orders events only within one partition.
    early, later = order(0, 0, src="purchases:0"), order(0, 30, src="purchases:1")
    on_time = view([early, later])
    late = view([later, early])
    assert math.isclose(float(late["monetary_decayed"]), 15.0, rel_tol=1e-12)  # type: ignore[arg-type]
    assert on_time == late


@pytest.mark.parametrize(
    ("days", "visits", "mean", "std"),
    [
        ([0], 1, None, None),
        ([0, 0.5], 1, None, None),  # same day twice is one visit
        ([0, 7, 14], 3, 7.0, 0.0),
        ([0, 2, 10], 3, 5.0, 3.0),
        ([10, 0, 2], 3, 5.0, 3.0),  # interior day inserted late
        ([0, 10, 2], 3, 5.0, 3.0),
    ],
)
def test_visit_cadence(
    days: list[float], visits: int, mean: float | None, std: float | None
) -> None:
    v = view([click(i, d, session=f"s{i}") for i, d in enumerate(days)])
    assert v["visits"] == visits
    assert v["visit_gap_mean_days"] == mean
    if std is None:
        assert v["visit_gap_std_days"] is None
    else:
        assert math.isclose(float(v["visit_gap_std_days"]), std, abs_tol=1e-9)  # type: ignore[arg-type]


def test_redelivered_offset_changes_nothing() -> None:
    state = fold([order(0, 0), order(1, 1)], CFG)
    again, outcome = apply(state, order(1, 1), CFG)
    assert outcome == "dup_offset" and again.fields == state.fields


def test_duplicate_event_id_at_new_offset_is_not_counted() -> None:
    state = fold([order(0, 0, eid="aaaaaaaa")], CFG)
    again, outcome = apply(state, order(5, 0, eid="aaaaaaaa"), CFG)
    assert outcome == "dup_event"
    assert profile_view("c1", again.fields)["orders"] == 1


def test_sessions_are_distinct_session_ids() -> None:
    v = view([click(0, 0, "s1"), click(1, 0.01, "s1"), click(2, 1, "s2")])
    assert v["clicks"] == 3 and v["sessions"] == 2
    assert v["channels"] == {"email": 3} and v["devices"] == {"mobile": 3}


def test_capped_map_overflows_to_other() -> None:
    cfg = ProfileConfig(map_cap=2)
    deltas = [order(i, i, cats=((name, 1.0),)) for i, name in enumerate(["a", "b", "c", "d"])]
    assert view(deltas, cfg)["categories"] == {"_other": 2.0, "a": 1.0, "b": 1.0}


def test_attributes_latest_ts_wins() -> None:
    def attrs(off: int, day: float, value: str) -> Delta:
        t = T0 + int(day * DAY_MS)
        return Delta(
            source="customer-attributes:0",
            offset=off,
            event_token=f"a{off:07x}",
            ts=t,
            day=t // DAY_MS,
            kind="attributes",
            attributes=(("region", f'"{value}"'),),
        )

    assert view([attrs(0, 1, "north"), attrs(1, 0, "south")])["attributes"] == {"region": "north"}
    assert view([attrs(0, 0, "south"), attrs(1, 1, "north")])["attributes"] == {"region": "north"}
    # attributes are not a visit
    assert view([attrs(0, 0, "south")])["visits"] == 0


def test_input_state_is_not_mutated() -> None:
    state = ProfileState()
    apply(state, order(0, 0), CFG)
    assert state.fields == {} and state.days == []


def test_gap_stats_needs_two_visits() -> None:
    assert gap_stats({"visits": "1"}) == (None, None)


# --- order independence -------------------------------------------------


@st.composite
def event_sets(draw: st.DrawFn) -> list[Delta]:
    count = draw(st.integers(1, 40))
    deltas = []
    for i in range(count):
        day = draw(st.floats(0, 400, allow_nan=False))
        kind = draw(st.sampled_from(["o", "c"]))
        if kind == "o":
            basket = draw(st.floats(0, 500, allow_nan=False))
            returned = draw(st.sampled_from([0.0, 0.0, 5.0]))
            origin = draw(st.sampled_from(["online", "store"]))
            cat = draw(st.sampled_from(["food", "toys", "home"]))
            # Each event comes from its own source partition so any order is a
            # legal delivery order (Kafka orders only within a partition).
            deltas.append(
                order(
                    i,
                    day,
                    basket,
                    returned,
                    origin,
                    ((cat, basket - returned),),
                    src=f"purchases:{i}",
                )
            )
        else:
            deltas.append(click(i, day, session=f"s{draw(st.integers(0, 5))}", src=f"clicks:{i}"))
    return deltas


@settings(max_examples=200, deadline=None)
@given(event_sets(), st.randoms(use_true_random=False))
def test_same_events_any_order_same_profile(deltas: list[Delta], rnd: random.Random) -> None:
    shuffled = list(deltas)
    rnd.shuffle(shuffled)
    assert_views_close(view(deltas), view(shuffled))


@settings(max_examples=100, deadline=None)
@given(event_sets())
def test_replaying_everything_twice_changes_nothing(deltas: list[Delta]) -> None:
    assert_views_close(view(deltas), view(deltas + deltas))


def test_a_category_named_like_the_internal_count_is_just_a_category() -> None:
    """Categories come from shops: "#", "C#" or "x#" must neither hide nor
    move the distinct-key count that keeps the map capped."""
    cfg = ProfileConfig(map_cap=3)
    cats = ("#", "C#", "books", "toys", "food")
    state = fold([order(i, i, basket=1.0, cats=((c, 1.0),)) for i, c in enumerate(cats)], cfg)
    view = profile_view("c", state.fields)
    assert view["categories"] == {"#": 1.0, "C#": 1.0, "books": 1.0, "_other": 2.0}


def test_a_legacy_count_is_moved_not_doubled() -> None:
    """Profiles written before the count had its own name kept it at 'cat:#'."""
    state = fold([order(0, 0, cats=(("food", 10.0),))], CFG)
    state.fields["cat:#"] = state.fields.pop("#cat:")
    assert profile_view("c", state.fields)["categories"] == {"food": 10.0}
    later, _ = apply(state, order(1, 1, cats=(("toys", 5.0),)), CFG)
    assert later.fields["#cat:"] == 2 and "cat:#" not in later.fields


@pytest.mark.parametrize(
    "ts_ms",
    [0, -1, 1, DAY_MS - 1, DAY_MS, -DAY_MS, -DAY_MS - 1, 1_767_225_600_000, 4_102_444_799_999],
)
@pytest.mark.parametrize(
    "zone",
    [
        dt.UTC,
        zoneinfo.ZoneInfo("UTC"),
        zoneinfo.ZoneInfo("Europe/Berlin"),
        zoneinfo.ZoneInfo("Pacific/Auckland"),
    ],
    ids=str,
)
def test_day_index_is_the_local_calendar_day(ts_ms: int, zone: dt.tzinfo) -> None:
    """UTC takes a shortcut (no datetime per event); every zone agrees with
    the calendar date of the instant in that zone, before 1970 too."""
    local = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts_ms)
    expected = (local.astimezone(zone).date() - dt.date(1970, 1, 1)).days
    assert day_index(ts_ms, zone) == expected


def test_a_click_becomes_a_delta_field_by_field() -> None:
    event = Click(
        event_id="ev-7",
        ts="2026-11-02T09:15:00Z",
        customer_id="c1",
        session_id="s-42",
        page_type="product",
        channel="email",
        device="mobile",
    )
    ts_ms = T0 + 5 * DAY_MS + 1234
    delta = to_delta(event, ts_ms, "clicks:3", 77, {"EUR": 1.0})
    assert delta == Delta(
        source="clicks:3",
        offset=77,
        event_token=token("ev-7"),
        ts=ts_ms,
        day=ts_ms // DAY_MS,
        kind="click",
        session_token=short_hash("s-42"),
        channel="email",
        device="mobile",
    )


def test_an_order_becomes_a_delta_field_by_field() -> None:
    """Every field of an order's delta by name (the delta is built
    positionally), in the reporting currency; a returned gift card at price
    0 sums to 0.0 in its category, not -0.0 (0 * -1 is -0 in Decimal)."""
    event = StoreReceipt(
        event_id="ev-8",
        ts="2026-11-02T09:15:00Z",
        loyalty_card="L-77",
        store_id="berlin-3",
        receipt_id="0042",
        items=[
            Item(
                sku="4006381333931", category="Obst & Gemüse", quantity="0.532", unit_price="2.99"
            ),
            Item(sku="gift-25", category="Gutscheine", quantity="-1", unit_price="0"),
            Item(sku="4006381333931", category="Obst & Gemüse", quantity="1", unit_price="2.99"),
        ],
        total="4.58",
        currency="CHF",
        payment_method="card",
    )
    ts_ms = T0 + 3 * DAY_MS
    delta = to_delta(event, ts_ms, "store-receipts:1", 9, {"EUR": 1.0, "CHF": 1.07})
    produce = (Decimal("0.532") * Decimal("2.99") + Decimal("2.99")) * Decimal("1.07")
    assert delta == Delta(
        source="store-receipts:1",
        offset=9,
        event_token=token("ev-8"),
        ts=ts_ms,
        day=ts_ms // DAY_MS,
        kind="order",
        origin="store",
        basket=float(produce),
        returned=0.0,
        net=float(produce),
        categories=(("Gutscheine", 0.0), ("Obst & Gemüse", float(produce))),
        payment_method="card",
        order_token=token("receipt:berlin-3/0042"),
    )
    assert math.copysign(1.0, dict(delta.categories)["Gutscheine"]) == 1.0


def test_labels_and_heads_packed_once_are_packed_alike_and_stay_bounded() -> None:
    """The packing keeps a shop's labels and each kind and source packed:
    what it keeps is what packing gives, and a flood of distinct labels
    (or sources) does not grow it past its bound."""
    from patronage.models import profile as profile_module

    for n in range(profile_module._PACKED_KEPT + 10):
        label = f"Kategorie {n}: Schuhe & Taschen"
        assert profile_module._counted_label(label) == profile_module._counted(label)
        assert profile_module._counted_label(label) == profile_module._counted(label)
        head = profile_module._head("click", f"{n}:0")
        assert head == b"c" + bytes((len(f"{n}:0"),)) + f"{n}:0".encode()
    assert len(profile_module._LABELS) <= profile_module._PACKED_KEPT
    assert len(profile_module._HEADS) <= profile_module._PACKED_KEPT
    assert profile_module._counted_label(None) == profile_module._counted_label("") == b"\0\0"
