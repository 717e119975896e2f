"""Lapse rules as tables: profile built from visit days -> decision at `now`."""

from __future__ import annotations

import math

import pytest

from patronage.models.lapse import (
    DAY_MS,
    Finding,
    LapseRules,
    evaluate,
    finding_from_json,
    finding_to_json,
    lapse_moment,
    on_new_visit,
    to_alert,
    value_at_risk,
)
from patronage.models.profile import Delta, ProfileConfig, ProfileState, apply, short_hash

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
RULES = LapseRules()
CFG = ProfileConfig(lapse=RULES)


def visit(i: int, day: float, spend: float = 10.0) -> Delta:
    t = T0 + round(day * DAY_MS)
    return Delta(
        src=f"p:{i}",
        off=0,
        eid=short_hash(f"{i}"),
        t=t,
        day=t // DAY_MS,
        k="o",
        origin="store",
        b=spend,
        n=spend,
        cats=(("food", spend),),
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


@pytest.mark.parametrize(
    ("name", "days", "now_day", "lapsed_at_day"), CASES, ids=[c[0] for c in CASES]
)
def test_evaluate(
    name: str, days: list[float], now_day: float, lapsed_at_day: float | None
) -> None:
    fields = profile(days).fields
    found = evaluate(fields, at(now_day), RULES)
    if lapsed_at_day is None:
        assert found is None
    else:
        assert found is not None and found.kind == "lapsed"
        assert math.isclose(found.ts, at(lapsed_at_day), abs_tol=1)
        assert found.episode == T0 + round(max(days) * DAY_MS)


def test_one_alert_per_episode() -> None:
    fields = dict(profile(WEEKLY).fields)
    found = evaluate(fields, at(200), RULES)
    assert found is not None
    fields["lapse_episode"] = float(found.episode)  # what the sweep records
    assert evaluate(fields, at(300), RULES) is None


def test_visit_after_alert_reactivates_once() -> None:
    state = profile(WEEKLY)
    state.fields["lapse_episode"] = state.fields["last_seen"]
    back, _ = apply(state, visit(100, 130), CFG)
    assert [f.kind for f in back.outbox] == ["reactivated"]
    assert back.outbox[0].ts == at(130)
    assert "lapse_episode" not in back.fields
    again, _ = apply(back, visit(101, 131), CFG)
    assert [f.kind for f in again.outbox] == ["reactivated"]  # nothing new


def test_late_event_after_alert_is_not_a_return() -> None:
    state = profile(WEEKLY)
    state.fields["lapse_episode"] = state.fields["last_seen"]
    late, _ = apply(state, visit(100, 50.5), CFG)  # happened long ago, arrived now
    assert late.outbox == []
    assert late.fields["lapse_episode"] == state.fields["last_seen"]


def test_return_without_a_sweep_emits_lapse_and_return() -> None:
    state = profile(WEEKLY)
    back, _ = apply(state, visit(100, 150), CFG)
    assert [(f.kind, f.ts) for f in back.outbox] == [("lapsed", at(112)), ("reactivated", at(150))]
    assert {f.episode for f in back.outbox} == {at(91)}


def test_return_within_threshold_is_nothing() -> None:
    assert on_new_visit(profile(WEEKLY).fields, at(112), RULES) == []


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
    fields = profile(WEEKLY).fields
    found = evaluate(fields, at(200), RULES)
    assert found is not None
    alert = to_alert("c7", found)
    assert alert.event_id == f"lapse:c7:lapsed:{found.episode}"
    assert alert.days_since_last_visit == pytest.approx(21.0)
    assert alert.usual_gap_days == pytest.approx(7.0)
    assert alert.value_at_risk == pytest.approx(140 / 91 * 7, abs=0.01)
    assert alert.last_seen == "2026-04-02T00:00:00.000Z"
    assert finding_from_json(finding_to_json(found)) == found
