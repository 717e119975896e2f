"""At-risk alerts and value tiers from the purchase predictions.

A buyer is *at risk* from the moment their BG/NBD `p_alive` falls below a
threshold with no purchase since; that moment is known in closed form
(`predict.at_risk_age`), so it is scheduled like a lapse judgement instead of
polled for. An *episode* starts with a purchase and ends with the next one;
its alert carries the id `at_risk:<customer>:<purchase ms>`.

Judging is done against a clock, like lapses (models/lapse.py): the
customer's `risk_orders` key keeps the orders not yet judged (normally for a
sweep interval: then it is gone), and an episode is decided
only once the clock has passed it — at risk when the clock is past its moment
and the next purchase (if any) came after that moment; over when the clock
reached the next purchase. So an order a slower topic delivers late, or a
backlog drained in big batches, gives the alerts history would have given.
Pure functions over the profile fields; streams/predicting.py runs them.
"""

from __future__ import annotations

import math
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
RISK_EPISODE = "risk_episode"  # the newest episode (its order ms) alerted
RISK_DECIDED = "risk_decided"  # the first episode not yet decided starts here
TIER = "value_tier"


@dataclass(frozen=True)
class RiskPlan:
    episode: int  # last purchase, epoch ms
    moment: float  # when p_alive falls below the threshold, epoch ms


def risk_plan(
    fields: Mapping[str, float | str], fitted: FittedParameters, threshold: float
) -> RiskPlan | None:
    """When the buyer, as the fields describe them at their last purchase,
    becomes at risk if no purchase comes; None when never (no repeat
    purchase yet)."""
    if "first_order_at" not in fields:
        return None
    first = float(fields["first_order_at"])
    episode = int(float(fields.get("last_order_at", first)))
    history = purchase_history(fields, episode)
    assert history is not None
    x, t_x, _, _ = history
    age = at_risk_age(fitted.purchases, x, t_x, threshold)
    if age is None:
        return None
    return RiskPlan(episode, first + age * WEEK_MS)


def order_edges(orders: str) -> list[tuple[float, int, float]]:
    """The orders not yet judged (the risk_orders key, "<ms>,<value>;" each):
    (time, orders at that time, their value), by time."""
    merged: dict[float, tuple[int, float]] = {}
    for entry in orders.split(";"):
        if entry:
            ts_text, _, value_text = entry.partition(",")
            count, value = merged.get(float(ts_text), (0, 0.0))
            merged[float(ts_text)] = (count + 1, value + float(value_text))
    return [(ts, count, value) for ts, (count, value) in sorted(merged.items())]


@dataclass(frozen=True)
class RiskJudgement:
    # (plan, the purchase history as it stood in that episode) per alert due
    findings: list[tuple[RiskPlan, dict[str, float | str]]]
    decided: float | None  # the first episode not decided starts here
    due: float | None  # the clock at which judging again can decide more


def judge_risk(
    fields: Mapping[str, float | str],
    orders: str,
    fitted: FittedParameters | None,
    threshold: float,
    clock: float,
) -> RiskJudgement:
    """Decide the purchase episodes the clock has passed (see the module
    docstring). The episodes: the one starting at `risk_decided` (its history
    is every order not in `orders`), then one per unjudged order. Without
    parameters episodes are decided without alerts: history from before the
    first fit is not alerted in bulk."""
    if "first_order_at" not in fields:
        return RiskJudgement([], None, None)

    def num(name: str) -> float:
        return float(fields.get(name, 0.0))

    edges = order_edges(orders)
    count = num("orders") - sum(c for _, c, _ in edges)
    spent = num("basket_sum") - sum(v for _, _, v in edges)
    episodes: list[tuple[float, float, float]] = []
    if count > 0 and RISK_DECIDED in fields:
        episodes.append((num(RISK_DECIDED), count, spent))
    elif not edges:
        # Orders from before at-risk judging (an upgrade, predictions off):
        # the open episode from the profile itself.
        episodes.append((num("last_order_at"), count, spent))
    for ts, c, v in edges:
        count += c
        spent += v
        episodes.append((ts, count, spent))
    if clock < episodes[0][0]:
        return RiskJudgement([], None, episodes[0][0])
    alerted = num(RISK_EPISODE) if RISK_EPISODE in fields else -math.inf
    findings: list[tuple[RiskPlan, dict[str, float | str]]] = []
    decided = episodes[0][0]  # nothing before the first start can still change it
    for i, (ts, cumulative, value) in enumerate(episodes):
        following = episodes[i + 1][0] if i + 1 < len(episodes) else None
        episode: dict[str, float | str] = {
            "first_order_at": num("first_order_at"),
            "first_order_value": num("first_order_value"),
            "last_order_at": ts,
            "orders": cumulative,
            "basket_sum": value,
        }
        plan = risk_plan(episode, fitted, threshold) if fitted is not None else None
        if plan is not None and ts > alerted and (following is None or plan.moment < following):
            if clock <= plan.moment:
                return RiskJudgement(findings, decided, plan.moment)
            findings.append((plan, episode))
            alerted = ts
        if following is None:
            break
        if clock < following:
            return RiskJudgement(findings, decided, following)
        decided = following
    return RiskJudgement(findings, decided, None)


def risk_alert(
    customer_id: str,
    episode: dict[str, float | str],
    segment: float | str | None,
    fitted: FittedParameters,
    threshold: float,
    plan: RiskPlan,
    annual_discount: float,
) -> RiskAlert:
    """The alert of an episode, valued at its moment from the purchase
    history as it stood then (the same content whenever it is sent, so a
    re-send after a crash is a true duplicate)."""
    at = predictions(episode, plan.moment, fitted, annual_discount)
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


def after_judging(
    fields: Mapping[str, float | str],
    orders: str,
    decided: float | None,
    alerted: float | None,
) -> tuple[dict[str, float | str], str]:
    """What a judgement changes: the profile fields (the judged and alerted
    marks, moved forward, never back) and the unjudged orders left (those
    after the decided start). The same in Lua: streams/lua/risk.lua."""
    out: dict[str, float | str] = {}
    if decided is not None:
        if RISK_DECIDED not in fields or decided > float(fields[RISK_DECIDED]):
            out[RISK_DECIDED] = decided
        mark = max(decided, float(fields.get(RISK_DECIDED, decided)))
        entries = [e for e in orders.split(";") if e]
        orders = "".join(f"{e};" for e in entries if float(e.partition(",")[0]) > mark)
    if alerted is not None and (
        RISK_EPISODE not in fields or alerted > float(fields[RISK_EPISODE])
    ):
        out[RISK_EPISODE] = alerted
    return out, orders
