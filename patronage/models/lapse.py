"""Lapse rules, measured against each customer's own rhythm.

A *regular* customer has at least `min_visits` visit days, the first at least
`min_tenure_days` before now. The *usual gap* is the running mean gap between
visit days. A regular customer is *lapsed* when the time since the last visit
is more than max(`min_gap_days`, `gap_multiplier` * usual gap).

`lapse_moment` is the instant a profile becomes lapsed if nothing else
happens; `evaluate(fields, now)` says whether to alert now. Both read the
profile fields (Redis strings or numbers) and never the clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from patronage.models.contracts import LapseAlert, format_ts

DAY_MS = 86_400_000


@dataclass(frozen=True)
class LapseRules:
    min_visits: int = 6
    min_tenure_days: float = 90.0
    min_gap_days: float = 14.0
    gap_multiplier: float = 3.0


@dataclass(frozen=True)
class Finding:
    """An alert decided by the rules; streams/ turns it into a LapseAlert."""

    kind: Literal["lapsed", "reactivated"]
    episode: int  # last_seen (ms) when the lapse began: identifies the episode
    ts: int  # when it happened: the lapse moment, or the returning visit
    usual_gap_days: float
    spend_total: float
    span_days: float
    segment: int | None


def _num(fields: Mapping[str, float | str], name: str) -> float:
    value = fields.get(name)
    return float(value) if value is not None else 0.0


def usual_gap_days(fields: Mapping[str, float | str]) -> float | None:
    visits = _num(fields, "visits")
    if visits < 2:
        return None
    return (_num(fields, "last_day") - _num(fields, "first_day")) / (visits - 1)


def threshold_days(fields: Mapping[str, float | str], rules: LapseRules) -> float:
    gap = usual_gap_days(fields) or 0.0
    return max(rules.min_gap_days, rules.gap_multiplier * gap)


def lapse_moment(fields: Mapping[str, float | str], rules: LapseRules) -> float | None:
    """When this profile becomes lapsed if no visit comes; None if it never can
    without new visits (too few visit days)."""
    if "last_seen" not in fields or _num(fields, "visits") < rules.min_visits:
        return None
    by_gap = _num(fields, "last_seen") + threshold_days(fields, rules) * DAY_MS
    by_tenure = _num(fields, "first_seen") + rules.min_tenure_days * DAY_MS
    return max(by_gap, by_tenure)


def is_lapsed(fields: Mapping[str, float | str], now_ms: float, rules: LapseRules) -> bool:
    moment = lapse_moment(fields, rules)
    return moment is not None and now_ms > moment


def already_alerted(fields: Mapping[str, float | str]) -> bool:
    return "lapse_episode" in fields and _num(fields, "lapse_episode") == _num(fields, "last_seen")


def finding(
    fields: Mapping[str, float | str],
    kind: Literal["lapsed", "reactivated"],
    episode: float,
    ts: float,
) -> Finding:
    segment = fields.get("segment")
    return Finding(
        kind=kind,
        episode=int(episode),
        ts=int(ts),
        usual_gap_days=usual_gap_days(fields) or 0.0,
        spend_total=_num(fields, "spend_total"),
        span_days=_num(fields, "last_day") - _num(fields, "first_day"),
        segment=int(float(segment)) if segment is not None else None,
    )


def evaluate(fields: Mapping[str, float | str], now_ms: float, rules: LapseRules) -> Finding | None:
    """A `lapsed` finding if the customer is lapsed at `now` and not yet alerted."""
    if already_alerted(fields) or not is_lapsed(fields, now_ms, rules):
        return None
    moment = lapse_moment(fields, rules)
    assert moment is not None
    return finding(fields, "lapsed", _num(fields, "last_seen"), moment)


def on_new_visit(fields: Mapping[str, float | str], t: float, rules: LapseRules) -> list[Finding]:
    """Findings caused by an activity at `t` later than last_seen, judged on
    the profile *before* that activity: the return of an alerted customer, or
    a lapse (and return) that no sweep caught in time."""
    if "last_seen" not in fields or t <= _num(fields, "last_seen"):
        return []
    episode = _num(fields, "last_seen")
    if already_alerted(fields):
        return [finding(fields, "reactivated", episode, t)]
    moment = lapse_moment(fields, rules)
    if moment is not None and t > moment:
        return [
            finding(fields, "lapsed", episode, moment),
            finding(fields, "reactivated", episode, t),
        ]
    return []


def value_at_risk(f: Finding) -> float:
    """Expected spend per usual gap: the customer's daily spend rate * usual gap."""
    if f.span_days <= 0:
        return 0.0
    return max(0.0, f.spend_total / f.span_days * f.usual_gap_days)


def to_alert(customer_id: str, f: Finding) -> LapseAlert:
    return LapseAlert(
        event_id=alert_id(customer_id, f),
        customer_id=customer_id,
        ts=format_ts(f.ts),
        kind=f.kind,
        last_seen=format_ts(f.episode),
        days_since_last_visit=round((f.ts - f.episode) / DAY_MS, 3),
        usual_gap_days=round(f.usual_gap_days, 3),
        value_at_risk=round(value_at_risk(f), 2),
        segment=f.segment,
    )


def finding_to_json(f: Finding) -> str:
    return json.dumps(
        {
            "k": f.kind,
            "e": f.episode,
            "ts": f.ts,
            "g": f.usual_gap_days,
            "s": f.spend_total,
            "sp": f.span_days,
            "seg": f.segment,
        },
        separators=(",", ":"),
    )


def finding_from_json(raw: bytes | str) -> Finding:
    doc = json.loads(raw)
    return Finding(
        kind=doc["k"],
        episode=int(doc["e"]),
        ts=int(doc["ts"]),
        usual_gap_days=float(doc["g"]),
        spend_total=float(doc["s"]),
        span_days=float(doc["sp"]),
        segment=None if doc["seg"] is None else int(doc["seg"]),
    )


def alert_id(customer_id: str, f: Finding) -> str:
    return f"lapse:{customer_id}:{f.kind}:{f.episode}"
