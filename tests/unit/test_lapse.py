"""Lapse rules as tables: profile built from visit days -> decision at `now`."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patronage.models.lapse import (
    DAY_MS,
    Finding,
    LapseRules,
    finding_from_json,
    finding_to_json,
    lapse_moment,
    to_alert,
    value_at_risk,
)
from patronage.models.profile import (
    Delta,
    ProfileConfig,
    ProfileState,
    apply,
    judge_lapses,
    short_hash,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
RULES = LapseRules()
CFG = ProfileConfig(lapse=RULES)


def visit(i: int, day: float, spend: float = 10.0) -> Delta:
    t = T0 + round(day * DAY_MS)
    return Delta(
        source=f"p:{i}",
        offset=0,
        event_token=short_hash(f"{i}"),
        ts=t,
        day=t // DAY_MS,
        kind="order",
        origin="store",
        basket=spend,
        net=spend,
        categories=(("food", spend),),
    )  # type: ignore[arg-type]


def profile(days: list[float]) -> ProfileState:
    state = ProfileState()
    for i, day in enumerate(days):
        state, _ = apply(state, visit(i, day), CFG)
    return state


def at(day: float) -> float:
    return T0 + day * DAY_MS


WEEKLY = [7.0 * w for w in range(14)]  # 14 visits, days 0..91, gap 7
# threshold = max(14, 3*7) = 21 days after day 91 -> lapse moment day 112

CASES = [
    ("weekly, 20 days quiet", WEEKLY, 111.0, None),
    ("weekly, exactly at threshold", WEEKLY, 112.0, None),
    ("weekly, just past threshold", WEEKLY, 112.001, 112.0),
    ("weekly, long gone", WEEKLY, 300.0, 112.0),
    ("one visit", [0.0], 400.0, None),
    ("same day six times is one visit", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 400.0, None),
    ("five visits is not regular", [0.0, 7, 14, 21, 28], 400.0, None),
    # 10 visits in 27 days: gap 3 -> threshold 14 days; tenure reached at day 90
    ("new customer, not yet 90 days", [3.0 * i for i in range(10)], 60.0, None),
    ("new customer, tenure reached", [3.0 * i for i in range(10)], 90.001, 90.0),
    # quarterly: gap 90 -> threshold 270 days
    ("quarterly, 200 days quiet", [90.0 * i for i in range(7)], 540 + 200.0, None),
    ("quarterly, 271 days quiet", [90.0 * i for i in range(7)], 540 + 271.0, 540 + 270.0),
    # irregular: gaps 1,1,1,1,60 -> mean 12.8 -> threshold 38.4 days
    ("irregular", [0.0, 1, 2, 3, 4, 64], 64 + 38.5, 64 + 38.4),
]


def judged(state: ProfileState, clock_day: float) -> list[tuple[str, float]]:
    """Judge at the clock; the new findings as (kind, ts)."""
    before = len(state.outbox)
    judge_lapses(state, at(clock_day), CFG)
    return [(f.kind, f.ts) for f in state.outbox[before:]]


def visits(state: ProfileState, *days: float) -> ProfileState:
    for n, day in enumerate(days):
        state, _ = apply(state, visit(1000 + n + int(day * 10), day), CFG)
    return state


@pytest.mark.parametrize(
    ("name", "days", "now_day", "lapsed_at_day"), CASES, ids=[c[0] for c in CASES]
)
def test_lapse_at_the_clock(
    name: str, days: list[float], now_day: float, lapsed_at_day: float | None
) -> None:
    state = profile(days)
    found = judged(state, now_day)
    if lapsed_at_day is None:
        assert found == []
    else:
        [(kind, ts)] = found
        assert kind == "lapsed" and math.isclose(ts, at(lapsed_at_day), abs_tol=1)
        assert state.outbox[-1].episode == T0 + round(max(days) * DAY_MS)


def test_one_alert_per_episode() -> None:
    state = profile(WEEKLY)
    assert judged(state, 200) == [("lapsed", at(112))]
    assert judged(state, 300) == []


def test_visit_after_alert_reactivates_once() -> None:
    state = profile(WEEKLY)
    assert judged(state, 120) == [("lapsed", at(112))]
    state = visits(state, 130)
    assert judged(state, 140) == [("reactivated", at(130))]
    assert state.outbox[-1].episode == at(91)
    state = visits(state, 131)
    assert judged(state, 141) == []


def test_late_event_after_alert_is_not_a_return() -> None:
    state = profile(WEEKLY)
    assert judged(state, 120) == [("lapsed", at(112))]
    state = visits(state, 50.5)  # happened long ago, arrived after the clock passed it
    assert judged(state, 125) == []
    assert state.fields["lapse_day"] == T0 // DAY_MS + 91


def test_return_seen_only_after_the_fact_emits_lapse_and_return() -> None:
    state = visits(profile(WEEKLY), 150)
    assert judged(state, 160) == [("lapsed", at(112)), ("reactivated", at(150))]
    assert {f.episode for f in state.outbox} == {at(91)}


def test_return_within_threshold_is_nothing() -> None:
    assert judged(visits(profile(WEEKLY), 112), 120) == []


def test_a_slower_topic_cannot_cause_a_false_lapse() -> None:
    """The clicks topic is at day 150 while the store receipts are only at
    day 95: the visits in between are not applied yet, so the gap 91 -> 150
    must not be judged. The old new-visit rule alerted here."""
    state = visits(profile(WEEKLY), 150)  # from the fast topic
    assert judged(state, 95) == []  # the clock is the slower topic's
    state = visits(state, *(98.0 + 7 * w for w in range(8)))  # the slow topic catches up
    assert judged(state, 160) == []
    assert state.outbox == []


def test_judging_twice_with_the_same_clock_changes_nothing() -> None:
    state = visits(profile(WEEKLY), 150)
    first = judged(state, 160)
    assert judged(state, 160) == [] and first


def test_lapse_moment_needs_enough_visits() -> None:
    assert lapse_moment(profile([0.0, 7]).fields, RULES) is None
    assert lapse_moment({}, RULES) is None


@pytest.mark.parametrize(
    ("spend", "span", "gap", "expected"),
    [
        (910.0, 91.0, 7.0, 70.0),
        (0.0, 10.0, 2.0, 0.0),
        (100.0, 0.0, 0.0, 0.0),
        (-50.0, 10.0, 2.0, 0.0),
    ],
)
def test_value_at_risk(spend: float, span: float, gap: float, expected: float) -> None:
    f = Finding("lapsed", 0, 0, gap, spend, span, None)
    assert value_at_risk(f) == pytest.approx(expected)


def test_alert_content_and_deterministic_id() -> None:
    state = profile(WEEKLY)
    judged(state, 200)
    [found] = state.outbox
    alert = to_alert("c7", found)
    assert alert.event_id == f"lapse:c7:lapsed:{found.episode}"
    assert alert.days_since_last_visit == pytest.approx(21.0)
    assert alert.usual_gap_days == pytest.approx(7.0)
    assert alert.value_at_risk == pytest.approx(140 / 91 * 7, abs=0.01)
    assert alert.last_seen == "2026-04-02T00:00:00.000Z"
    assert finding_from_json(finding_to_json(found)) == found


def truth(times: list[int], clock: float, rules: LapseRules) -> set[tuple[str, int, int]]:
    """(kind, episode, ts) from the definitions, walking the activity in time
    order; written apart from lapse.judge."""
    out: set[tuple[str, int, int]] = set()
    days: set[int] = set()
    first = last = None

    def moment() -> float | None:
        if len(days) < rules.min_visits:
            return None
        gap = (max(days) - min(days)) / (len(days) - 1)
        threshold = max(rules.min_gap_days, rules.gap_multiplier * gap)
        return max(last + threshold * DAY_MS, first + rules.min_tenure_days * DAY_MS)  # type: ignore[operator]

    for t in sorted(times):
        if last is not None and t > last:
            m = moment()
            if m is not None and t > m:
                out |= {("lapsed", last, int(m)), ("reactivated", last, t)}
        days.add(t // DAY_MS)
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
    m = moment()
    if m is not None and clock > m:
        out.add(("lapsed", last, int(m)))  # type: ignore[arg-type]
    return out


SMALL_RULES = LapseRules(min_visits=3, min_tenure_days=10, min_gap_days=4, gap_multiplier=2.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 200 * 24), min_size=1, max_size=40),  # activity hours
    st.randoms(use_true_random=False),
    st.integers(1, 6),
)
def test_judging_out_of_order_arrival_matches_the_definitions(
    hours: list[int], rng: Any, batches: int
) -> None:
    """Events arrive in any order, in batches; after each batch the clock is
    whatever every event not yet applied is still later than (what the
    partition clock guarantees). The alerts equal the ones history gives."""
    cfg = ProfileConfig(lapse=SMALL_RULES)
    times = sorted({T0 + h * 3_600_000 for h in hours})
    order = list(times)
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, len(order) + 1), min(batches, len(order))))
    state = ProfileState()
    start = 0
    for cut in [*cuts, len(order)]:
        for n, t in enumerate(order[start:cut]):
            delta = Delta(
                source="s:0",
                offset=start + n,
                event_token=f"{t:016x}",
                ts=t,
                day=t // DAY_MS,
                kind="click",
            )  # type: ignore[arg-type]
            state, _ = apply(state, delta, cfg)
        start = cut
        pending = order[cut:]
        clock = min(pending) - 1 if pending else max(times)
        judge_lapses(state, clock, cfg)
    end = max(times) + 400 * DAY_MS
    judge_lapses(state, end, cfg)
    found = {(f.kind, f.episode, f.ts) for f in state.outbox}
    assert found == truth(times, end, SMALL_RULES)
    assert len(found) == len(state.outbox)  # nothing twice
