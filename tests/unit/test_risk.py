"""At-risk moments and value tiers (models/risk.py, predict.at_risk_age),
checked against lifetimes' BG/NBD (an independent implementation) and the
scalar formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import brentq

from patronage.models.predict import (
    FittedParameters,
    at_risk_age,
    clv,
    clv_many,
    p_alive,
    p_alive_many,
    predictions,
)
from patronage.models.risk import RISK_EPISODE, risk_alert, risk_plan, tiers
from tests.unit.test_predict import CUSTOMERS, PUBLISHED_BGNBD, PUBLISHED_GG, WEEK, reference

FITTED = FittedParameters(3, PUBLISHED_BGNBD, PUBLISHED_GG, 2357, 0, (10.0, 200.0))


def lifetimes_p_alive(x: float, t_x: float, T: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = reference().conditional_probability_alive(x, t_x, T)  # type: ignore[attr-defined]
    return float(np.asarray(value).item())


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


def test_a_plan_per_episode_and_none_once_alerted() -> None:
    fields = buyer(4, 10.0)
    plan = risk_plan(fields, FITTED, 0.3)
    assert plan is not None and plan.episode == 10 * WEEK
    age = at_risk_age(PUBLISHED_BGNBD, 3, 10.0, 0.3)
    assert age is not None and plan.moment == pytest.approx(age * WEEK, rel=1e-12)
    alerted = {**fields, RISK_EPISODE: str(10 * WEEK)}
    assert risk_plan(alerted, FITTED, 0.3) is None
    # A purchase starts the next episode, scheduled after it (and, BG/NBD
    # being what it is, a frequent buyer's silence counts sooner).
    again = risk_plan({**alerted, "last_order_at": str(12 * WEEK), "orders": "5"}, FITTED, 0.3)
    assert again is not None and again.episode == 12 * WEEK
    assert 12 * WEEK < again.moment < plan.moment
    assert risk_plan(buyer(1, 0.0), FITTED, 0.3) is None  # one order only
    assert risk_plan({"visits": "3"}, FITTED, 0.3) is None  # never ordered


def test_the_alert_is_valued_at_its_moment() -> None:
    fields = buyer(4, 10.0)
    plan = risk_plan(fields, FITTED, 0.3)
    assert plan is not None
    alert = risk_alert("c-7", fields, FITTED, 0.3, plan, 0.1)
    assert alert.event_id == f"at_risk:c-7:{10 * WEEK}"
    assert alert.p_alive == pytest.approx(0.3, abs=1e-6)
    assert alert.segment == 2 and alert.parameters_version == 3
    assert alert.last_order_at == "1970-03-12T00:00:00.000Z"
    # Sent again later (after a crash): the same content.
    assert risk_alert("c-7", dict(fields), FITTED, 0.3, plan, 0.1) == alert


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
