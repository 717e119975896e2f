"""At-risk moments and value tiers (models/risk.py, predict.at_risk_age),
checked against lifetimes' BG/NBD (an independent implementation) and the
scalar formulas."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import hyp2f1

from patronage.models.layout import stored_text
from patronage.models.predict import (
    BGNBD,
    FittedParameters,
    at_risk_age,
    clv,
    clv_many,
    p_alive,
    p_alive_many,
    predictions,
)
from patronage.models.risk import (
    RISK_DECIDED,
    after_judging,
    judge_risk,
    risk_alert,
    risk_plan,
    tiers,
)
from tests.unit.test_predict import CUSTOMERS, PUBLISHED_BGNBD, PUBLISHED_GG, WEEK, reference

FITTED = FittedParameters(3, PUBLISHED_BGNBD, PUBLISHED_GG, 2357, 0, (10.0, 200.0))


@functools.cache
def fitter_for(params: BGNBD) -> Any:
    fitter = reference()
    fitter.params_ = fitter.params_.copy()  # type: ignore[attr-defined]
    for name, value in params.__dict__.items():
        fitter.params_[name] = value  # type: ignore[attr-defined]
    return fitter


def lifetimes_p_alive(x: float, t_x: float, T: float, params: BGNBD = PUBLISHED_BGNBD) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alive = fitter_for(params).conditional_probability_alive(x, t_x, T)
    return float(np.asarray(alive).item())


@pytest.mark.parametrize(
    ("x", "t_x", "threshold"),
    [
        (1, 1.71, 0.5),
        (2, 30.43, 0.3),
        (5, 38.86, 0.3),
        (14, 20.0, 0.1),
        (200, 150.0, 0.5),  # very large x: the crossing comes soon after t_x
        (3, 0.0, 0.8),  # every purchase in the first week
    ],
)
def test_at_risk_age_is_where_p_alive_crosses_the_threshold(
    x: int, t_x: float, threshold: float
) -> None:
    age = at_risk_age(PUBLISHED_BGNBD, x, t_x, threshold)
    assert age is not None and age > t_x
    # Independently: the root of lifetimes' p_alive - threshold in T.
    root = brentq(lambda T: lifetimes_p_alive(x, t_x, T) - threshold, t_x, t_x + 1e6, xtol=1e-12)
    assert age == pytest.approx(root, rel=1e-9)
    assert p_alive(PUBLISHED_BGNBD, x, t_x, age * (1 - 1e-6)) > threshold
    assert p_alive(PUBLISHED_BGNBD, x, t_x, age * (1 + 1e-6)) < threshold


def test_at_risk_age_literal_cases() -> None:
    # A one-time buyer is alive for sure under BG/NBD: never at risk.
    assert at_risk_age(PUBLISHED_BGNBD, 0, 0.0, 0.5) is None
    # A threshold that can never be crossed.
    assert at_risk_age(PUBLISHED_BGNBD, 3, 2.0, 0.0) is None
    assert at_risk_age(PUBLISHED_BGNBD, 3, 2.0, 1.0) is None
    # p_alive right after a first repeat purchase is 1 / (1 + a / b) = 0.754:
    # with a threshold above it the customer is at risk at the purchase itself.
    assert at_risk_age(PUBLISHED_BGNBD, 1, 5.0, 0.8) == 5.0


def stepwise_clv(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, zbar: np.ndarray, weeks: float, rate: float
) -> np.ndarray:
    """clv_many as it was written first: one step at a time."""
    r, alpha, a, b = (
        PUBLISHED_BGNBD.r,
        PUBLISHED_BGNBD.alpha,
        PUBLISHED_BGNBD.a,
        PUBLISHED_BGNBD.b,
    )
    p, q, g = PUBLISHED_GG.p, PUBLISHED_GG.q, PUBLISHED_GG.gamma
    safe_x = np.where(x > 0, x, 1.0)
    value = np.where(x > 0, (g + x * zbar) * p / (p * safe_x + q - 1), p * g / (q - 1))
    alive = p_alive_many(PUBLISHED_BGNBD, x, t_x, T)
    step_rate = (1 + rate) ** ((52 / 12) / 52) - 1
    total, before = np.zeros_like(x), np.zeros_like(x)
    for step in range(1, math.ceil(weeks / (52 / 12)) + 1):
        t = min(weeks, step * (52 / 12))
        z = t / (alpha + T + t)
        shape = np.exp((r + x) * np.log((alpha + T) / (alpha + T + t)))
        body = (a + b + x - 1) / (a - 1) * (1 - shape * hyp2f1(r + x, b + x, a + b + x - 1, z))
        cumulative = body * alive
        total += (cumulative - before) * value / (1 + step_rate) ** step
        before = cumulative
    return total


@pytest.mark.parametrize(("weeks", "rate"), [(365 / 7, 0.1), (52.0, 0.0), (10.0, 0.3), (0.0, 0.1)])
def test_all_steps_at_once_give_the_stepwise_values_to_the_bit(weeks: float, rate: float) -> None:
    rng = np.random.default_rng(7)  # and 5,000 buyers of every kind, a bit may differ in any
    x = np.concatenate([np.asarray([c[0] for c in CUSTOMERS] * 3), rng.integers(0, 40, 5000)])
    T = np.concatenate([np.asarray([c[2] for c in CUSTOMERS] * 3), rng.uniform(0.1, 120, 5000)])
    t_x = np.concatenate([np.asarray([c[1] for c in CUSTOMERS] * 3), T[-5000:] * rng.random(5000)])
    zbar = np.concatenate(
        [np.repeat([0.0, 12.5, 480.0], len(CUSTOMERS)), rng.uniform(0, 500, 5000)]
    )
    x, t_x, T, zbar = (np.asarray(v, dtype=float) for v in (x, t_x, T, zbar))
    many = clv_many(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, zbar, weeks, rate)
    assert np.array_equal(many, stepwise_clv(x, t_x, T, zbar, weeks, rate), equal_nan=True)


def test_batch_formulas_equal_the_scalar_ones() -> None:
    rows = [(x, t_x, T, zbar) for x, t_x, T in CUSTOMERS for zbar in (0.0, 12.5, 480.0)]
    x, t_x, T, zbar = (np.asarray(c, dtype=float) for c in zip(*rows, strict=True))
    many = clv_many(PUBLISHED_BGNBD, PUBLISHED_GG, x, t_x, T, zbar, 365 / 7, 0.1)
    alive = p_alive_many(PUBLISHED_BGNBD, x, t_x, T)
    for i, row in enumerate(rows):
        if row[0] == 0 and row[3] != 0:
            continue  # no repeat purchase has no repeat mean
        assert many[i] == pytest.approx(
            clv(PUBLISHED_BGNBD, PUBLISHED_GG, *row, weeks=365 / 7), rel=1e-12, abs=1e-300
        )
        assert alive[i] == pytest.approx(p_alive(PUBLISHED_BGNBD, *row[:3]), rel=1e-12, abs=1e-300)


def buyer(orders: int, last_week: float, spent: float = 300.0) -> dict[str, float | str]:
    return {
        "first_order_at": "0",
        "first_order_value": "40",
        "last_order_at": str(int(last_week * WEEK)),
        "orders": str(orders),
        "basket_sum": str(spent),
        "segment": "2",
    }


def test_a_plan_per_episode() -> None:
    fields = buyer(4, 10.0)
    plan = risk_plan(fields, FITTED, 0.3)
    assert plan is not None and plan.episode == 10 * WEEK
    age = at_risk_age(PUBLISHED_BGNBD, 3, 10.0, 0.3)
    assert age is not None and plan.moment == pytest.approx(age * WEEK, rel=1e-12)
    # The next purchase starts the next episode, scheduled after it (and,
    # BG/NBD being what it is, a frequent buyer's silence counts sooner).
    again = risk_plan({**fields, "last_order_at": str(12 * WEEK), "orders": "5"}, FITTED, 0.3)
    assert again is not None and again.episode == 12 * WEEK
    assert 12 * WEEK < again.moment < plan.moment
    assert risk_plan(buyer(1, 0.0), FITTED, 0.3) is None  # one order only
    assert risk_plan({"visits": "3"}, FITTED, 0.3) is None  # never ordered


def test_the_alert_is_valued_at_its_moment() -> None:
    fields = buyer(4, 10.0)
    plan = risk_plan(fields, FITTED, 0.3)
    assert plan is not None
    alert = risk_alert("c-7", fields, "2", FITTED, 0.3, plan, 0.1)
    assert alert.event_id == f"at_risk:c-7:{10 * WEEK}"
    assert alert.p_alive == pytest.approx(0.3, abs=1e-6)
    assert alert.segment == 2 and alert.parameters_version == 3
    assert alert.last_order_at == "1970-03-12T00:00:00.000Z"
    # Sent again later (after a crash): the same content.
    assert risk_alert("c-7", dict(fields), "2", FITTED, 0.3, plan, 0.1) == alert


def reference_alerts(
    orders: list[tuple[int, float]], clock: float, threshold: float
) -> dict[int, int]:
    return reference_alerts_with(PUBLISHED_BGNBD, orders, clock, threshold)


def reference_alerts_with(
    params: BGNBD, orders: list[tuple[int, float]], clock: float, threshold: float
) -> dict[int, int]:
    """episode (purchase ms) -> alert ms, from the definition: p_alive of the
    history up to that purchase (lifetimes' formula, root by brentq) falls
    below the threshold before the next purchase, and before the clock."""
    days = sorted({ts for ts, _ in orders})
    first = days[0]
    out = {}
    for i, ts in enumerate(days):
        x = sum(1 for t, _ in orders if t <= ts) - 1
        if x < 1:
            continue
        t_x = (ts - first) / WEEK

        def gap(T: float, x: float = x, t_x: float = t_x) -> float:
            return lifetimes_p_alive(x, t_x, T, params) - threshold

        if gap(t_x) < 0:
            moment = float(ts)
        else:
            moment = first + brentq(gap, t_x, t_x + 1e5, xtol=1e-10) * WEEK
        following = days[i + 1] if i + 1 < len(days) else math.inf
        if moment < following and moment < clock:
            out[ts] = int(moment)
    return out


class Buyer:
    """A profile's purchase fields and its unjudged orders, kept as the apply
    path keeps them (models/profile.py, apply.lua) and judged as a sweep does."""

    def __init__(self) -> None:
        self.fields: dict[str, float | str] = {}
        self.orders = ""
        self.sent: list[tuple[int, int]] = []

    def order(self, ts: int, value: float) -> None:
        f = self.fields
        f["orders"] = float(f.get("orders", 0)) + 1
        f["basket_sum"] = float(f.get("basket_sum", 0)) + value
        f["last_order_at"] = max(float(f.get("last_order_at", 0)), ts)
        first = (float(f.get("first_order_at", math.inf)), float(f.get("first_order_value", 0)))
        if (ts, value) < first:
            f["first_order_at"], f["first_order_value"] = float(ts), value
        if RISK_DECIDED not in f or ts > float(f[RISK_DECIDED]):
            self.orders += f"{stored_text(float(ts))},{stored_text(value)};"

    def sweep(self, fitted: FittedParameters | None, threshold: float, clock: float) -> None:
        judgement = judge_risk(self.fields, self.orders, fitted, threshold, clock)
        self.sent.extend((plan.episode, int(plan.moment)) for plan, _ in judgement.findings)
        alerted = judgement.findings[-1][0].episode if judgement.findings else None
        marks, self.orders = after_judging(self.fields, self.orders, judgement.decided, alerted)
        self.fields.update(marks)


LATENESS = 3 * 86_400_000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.integers(0, 200), min_size=1, max_size=14),
    values=st.lists(st.sampled_from([4.99, 12.5, 23.0, 79.9, 149.0]), min_size=14, max_size=14),
    delays=st.lists(st.integers(0, LATENESS // 3_600_000), min_size=14, max_size=14),
    sweeps=st.lists(st.booleans(), min_size=14, max_size=14),
    threshold=st.sampled_from([0.2, 0.3, 0.5]),
)
def test_judging_at_a_lagging_clock_gives_the_alerts_of_the_definition(
    gaps: list[int], values: list[float], delays: list[int], sweeps: list[bool], threshold: float
) -> None:
    """Orders at day gaps, delivered out of order (each up to the lateness
    late), judged by sweeps at (newest delivered - lateness) now and then:
    the alerts are exactly those of the definition, none twice, and no
    unjudged order is left once the clock passed them all."""
    start = 10_000 * 86_400_000
    times = [start + sum(gaps[: i + 1]) * 86_400_000 for i in range(len(gaps))]
    orders = list(zip(times, values, strict=False))
    arrival = sorted(range(len(orders)), key=lambda i: orders[i][0] + delays[i] * 3_600_000)
    buyer_ = Buyer()
    newest = 0
    for i, judge_now in zip(arrival, sweeps, strict=False):
        buyer_.order(*orders[i])
        newest = max(newest, orders[i][0])
        if judge_now:
            buyer_.sweep(FITTED, threshold, newest - LATENESS)
    final = times[-1] + 400 * 86_400_000  # long after: every episode decided
    buyer_.sweep(FITTED, threshold, final)
    sent = buyer_.sent
    assert len(sent) == len(set(sent)), "an episode was alerted twice"
    assert dict(sent) == pytest.approx(reference_alerts(orders, final, threshold), abs=1)
    assert buyer_.orders == "" and float(buyer_.fields[RISK_DECIDED]) == max(times)


def test_a_late_order_inside_a_passed_gap_still_counts() -> None:
    """A daily buyer (p_alive falls within days of silence at a high
    threshold): the order that ends a gap is delivered 9 days late, after a
    sweep whose clock passed the gap's start but not its end. Deciding the gap
    then would lose the late order's own episode, which the definition alerts."""
    day, lateness, threshold = 86_400_000, 10 * 86_400_000, 0.9
    orders = [(n * day, 9.99) for n in range(200)] + [(207 * day, 9.99), (214 * day, 9.99)]
    history = Buyer()
    for ts, value in orders[:200]:
        history.order(ts, value)
    history.order(*orders[-1])  # day 214 arrives ...
    history.sweep(FITTED, threshold, 214 * day - lateness)  # clock: day 204
    history.order(*orders[-2])  # ... day 207 arrives 9 days late
    final = 400 * day
    history.sweep(FITTED, threshold, final)
    expected = reference_alerts(orders, final, threshold)
    assert 207 * day in expected, "the late order's episode must be at risk in this history"
    assert dict(history.sent) == pytest.approx(expected, abs=1)


def test_without_parameters_history_is_judged_silently() -> None:
    history = Buyer()
    for week in range(6):
        history.order(week * WEEK, 20.0)
    judgement = judge_risk(history.fields, history.orders, None, 0.3, 40 * WEEK)
    assert judgement.findings == [] and judgement.decided == 5 * WEEK and judgement.due is None
    history.sweep(None, 0.3, 40 * WEEK)
    assert history.orders == "" and history.sent == []
    # The fit arrives: only the open episode can still be alerted.
    history.sweep(FITTED, 0.3, 60 * WEEK)
    assert [episode for episode, _ in history.sent] == [5 * WEEK]


def test_a_profile_from_before_judging_is_judged_from_its_fields() -> None:
    """Orders applied with predictions off (or before an upgrade) leave no
    unjudged orders: the open episode comes from the profile itself."""
    fields = {**buyer(4, 10.0)}
    judgement = judge_risk(fields, "", FITTED, 0.3, 100 * WEEK)
    [(plan, _)] = judgement.findings
    assert plan.episode == 10 * WEEK and judgement.decided == 10 * WEEK


def test_batch_tiers_equal_the_profile_view() -> None:
    profiles = {
        "loyal": buyer(20, 30.0, 1000.0),
        "gone": buyer(2, 1.0, 50.0),
        "middling": buyer(3, 20.0, 150.0),
        "one-off": buyer(1, 0.0, 40.0),
        "browser": {"visits": "3"},
    }
    now = 31 * WEEK
    judged = tiers(profiles, FITTED, now, 0.1)
    assert set(judged) == {"loyal", "gone", "middling", "one-off"}
    for customer_id, (tier, value) in judged.items():
        view = predictions(profiles[customer_id], now, FITTED)
        assert tier == view["value_tier"]
        assert value == pytest.approx(view["predicted_clv_365d"], rel=1e-12)
    assert judged["loyal"][0] == "best" and judged["gone"][0] == "low_value"


def test_alerts_tail_prints_every_kind_on_the_two_topics() -> None:
    """`patronage alerts tail` reads lapse-alerts and segment-changes, where
    at_risk alerts and tier changes now travel beside the older kinds."""
    from patronage.models.contracts import TierChange
    from patronage.streams.outputs import alert_line

    fields = buyer(4, 10.0)
    plan = risk_plan(fields, FITTED, 0.3)
    assert plan is not None
    risk = risk_alert("c-7", fields, "2", FITTED, 0.3, plan, 0.1).model_dump_json()
    tier = TierChange(
        event_id="tier:c-7:3:9:best",
        customer_id="c-7",
        ts="2026-11-30T10:00:00.000Z",
        previous_tier="regular",
        tier="best",
        predicted_clv_365d=412.5,
        parameters_version=3,
        reason="profile",
    ).model_dump_json()
    lapse = (
        '{"event_id": "lapse:c-7:lapsed:1", "customer_id": "c-7", "ts": "2026-10-24T00:00:00Z",'
        ' "kind": "lapsed", "last_seen": "2026-10-03T00:00:00Z", "days_since_last_visit": 21.0,'
        ' "usual_gap_days": 7.0, "value_at_risk": 63.5, "segment": 2}'
    )
    segment = (
        '{"event_id": "seg:c-7:1:9", "customer_id": "c-7", "ts": "2026-11-30T10:00:00Z",'
        ' "kind": "segment", "previous_segment": null, "segment": 1, "segment_label": "weekly",'
        ' "model_version": 1, "reason": "profile"}'
    )
    assert "at_risk" in alert_line("lapse-alerts", risk.encode()) and "p_alive 0.30" in (
        alert_line("lapse-alerts", risk.encode())
    )
    assert "regular -> best" in alert_line("segment-changes", tier.encode())
    assert "lapsed" in alert_line("lapse-alerts", lapse.encode())
    assert "None -> 1 weekly" in alert_line("segment-changes", segment.encode())
