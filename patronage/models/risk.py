"""At-risk alerts and value tiers from the purchase predictions.

A buyer is *at risk* from the moment their BG/NBD `p_alive` falls below a
threshold with no purchase since; that moment is known in closed form
(`predict.at_risk_age`) when the last purchase is applied, so it is scheduled
like a lapse judgement instead of polled for. An *episode* is identified by
the last purchase: a new purchase ends it (and schedules the next), and the
alert of an episode carries the id `at_risk:<customer>:<last order ms>`.
Pure functions over the profile fields; streams/predicting.py runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from patronage.models.contracts import RiskAlert, format_ts
from patronage.models.predict import (
    WEEK_MS,
    FittedParameters,
    Tier,
    at_risk_age,
    clv_many,
    predictions,
    purchase_history,
    value_tier,
)

# Profile fields written here (layout.FIELDS lists them too).
RISK_EPISODE = "risk_episode"  # the episode (last order ms) whose alert was sent
TIER = "value_tier"


@dataclass(frozen=True)
class RiskPlan:
    episode: int  # last purchase, epoch ms
    moment: float  # when p_alive falls below the threshold, epoch ms


def risk_plan(
    fields: Mapping[str, float | str], fitted: FittedParameters, threshold: float
) -> RiskPlan | None:
    """When this buyer becomes at risk if no purchase comes; None when never
    (no repeat purchase yet) or when this episode's alert was already sent."""
    if "first_order_at" not in fields:
        return None
    first = float(fields["first_order_at"])
    episode = int(float(fields.get("last_order_at", first)))
    if RISK_EPISODE in fields and int(float(fields[RISK_EPISODE])) == episode:
        return None
    history = purchase_history(fields, episode)
    assert history is not None
    x, t_x, _, _ = history
    age = at_risk_age(fitted.purchases, x, t_x, threshold)
    if age is None:
        return None
    return RiskPlan(episode, first + age * WEEK_MS)


def risk_alert(
    customer_id: str,
    fields: dict[str, float | str],
    fitted: FittedParameters,
    threshold: float,
    plan: RiskPlan,
    annual_discount: float,
) -> RiskAlert:
    """The alert of an episode, valued at its moment (the same content
    whenever it is sent, so a re-send after a crash is a true duplicate)."""
    at = predictions(fields, plan.moment, fitted, annual_discount)
    segment = fields.get("segment")
    return RiskAlert(
        event_id=f"at_risk:{customer_id}:{plan.episode}",
        customer_id=customer_id,
        ts=format_ts(int(plan.moment)),
        last_order_at=format_ts(plan.episode),
        p_alive=round(float(at["p_alive"]), 6),  # type: ignore[arg-type]
        threshold=threshold,
        expected_orders_90d=round(float(at["expected_orders_90d"]), 6),  # type: ignore[arg-type]
        predicted_clv_365d=round(float(at["predicted_clv_365d"]), 2),  # type: ignore[arg-type]
        segment=None if segment is None else int(float(segment)),
        parameters_version=fitted.version,
    )


def tiers(
    profiles: Mapping[str, Mapping[str, float | str]],
    fitted: FittedParameters,
    now_ms: float,
    annual_discount: float,
) -> dict[str, tuple[Tier, float]]:
    """(tier, predicted 365-day CLV) of every buyer among the profiles, at
    `now_ms`, computed for the whole batch at once."""
    ids, rows = [], []
    for customer_id, fields in profiles.items():
        history = purchase_history(fields, now_ms)
        if history is not None:
            ids.append(customer_id)
            rows.append(history)
    if not ids:
        return {}
    x, t_x, age, zbar = np.asarray(rows, dtype=float).T
    values = clv_many(fitted.purchases, fitted.spend, x, t_x, age, zbar, 365 / 7, annual_discount)
    return {
        cid: (value_tier(float(v), fitted.clv_cuts), float(v))
        for cid, v in zip(ids, values, strict=True)
    }
