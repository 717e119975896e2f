"""Lapse rules, measured against each customer's own rhythm.

A *regular* customer has at least `min_visits` visit days, the first at least
`min_tenure_days` before now. The *usual gap* is the running mean gap between
visit days. A regular customer is *lapsed* when the time since the last visit
is more than max(`min_gap_days`, `gap_multiplier` * usual gap).

`lapse_moment` is the instant a profile becomes lapsed if nothing else
happens; `judge(edges, fields, clock)` decides the gaps between visit days
that the event clock has passed (see its docstring). Both read the profile
fields (Redis strings or numbers) and never the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

from patronage.models.contracts import LapseAlert, format_ts
from patronage.models.layout import FINDING_WIRE
from patronage.models.timeunits import DAY_MS


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


@dataclass(frozen=True)
class Judgement:
    """What judging a profile's visit gaps against the clock decided."""

    findings: list[Finding]
    decided_days: list[int]  # days whose outgoing gap is decided for good
    lapse_day: int | None  # the day whose gap has a `lapsed` awaiting its `reactivated`
    due: float | None  # the clock at which judging again can decide more


def moment_at(
    last_seen: float,
    visits: float,
    first_day: float,
    day: float,
    first_seen: float,
    rules: LapseRules,
) -> float | None:
    """The lapse moment of a profile whose last visit day is `day` (last
    activity `last_seen`) after `visits` visit days from `first_day`."""
    if visits < rules.min_visits:
        return None
    gap = (day - first_day) / (visits - 1) if visits >= 2 else 0.0
    threshold = max(rules.min_gap_days, rules.gap_multiplier * gap)
    return max(last_seen + threshold * DAY_MS, first_seen + rules.min_tenure_days * DAY_MS)


def _gap_finding(
    kind: Literal["lapsed", "reactivated"],
    ts: float,
    episode: float,
    usual_gap_days: float,
    spend_total: float,
    span_days: float,
    segment: int | None,
) -> Finding:
    return Finding(kind, int(episode), int(ts), usual_gap_days, spend_total, span_days, segment)


def judge(
    edges: Mapping[int, tuple[float, float]],
    fields: Mapping[str, float | str],
    clock: float,
    rules: LapseRules,
) -> Judgement:
    """Decide the gaps between visit days that the event clock has passed.

    `edges` holds, for every visit day not yet decided, its first and last
    activity (epoch ms). A gap from day d (last activity `hi`) to the next
    visit day (first activity `lo`) is a lapse when the lapse moment of the
    profile as it stood at `hi` comes before `lo`. Nothing is decided before
    the clock has passed it: a `lapsed` needs clock > moment (no activity
    between `hi` and the moment can still arrive), a `reactivated` or a
    no-lapse decision needs clock >= lo. So an activity that a slower topic
    delivers later can never turn into a false alert while it is within the
    lateness the clock allows for. Pure; the same in Lua (apply.lua)."""
    days = sorted(edges)
    total = _num(fields, "visits")
    first_day = _num(fields, "first_day")
    first_seen = _num(fields, "first_seen")
    lapse_day = int(_num(fields, "lapse_day")) if "lapse_day" in fields else None
    segment = fields.get("segment")
    findings: list[Finding] = []
    decided: list[int] = []
    due: float | None = None
    for i, day in enumerate(days):
        hi = edges[day][1]
        visits = total - (len(days) - 1 - i)
        found = partial(
            _gap_finding,
            episode=hi,
            usual_gap_days=(day - first_day) / (visits - 1) if visits >= 2 else 0.0,
            spend_total=_num(fields, "spend_total"),
            span_days=day - first_day,
            segment=int(float(segment)) if segment is not None else None,
        )
        step = _decide_gap(
            day,
            moment_at(hi, visits, first_day, day, first_seen, rules),
            edges[days[i + 1]][0] if i + 1 < len(days) else None,
            lapse_day,
            clock,
            found,
        )
        findings.extend(step.findings)
        lapse_day = step.lapse_day
        if not step.decided:
            due = step.due
            break
        decided.append(day)
    return Judgement(findings, decided, lapse_day, due)


@dataclass(frozen=True)
class _Step:
    findings: list[Finding]
    lapse_day: int | None
    due: float | None  # when the gap can be decided (not decided yet)
    decided: bool


def _decide_gap(
    day: int,
    moment: float | None,
    lo: float | None,
    lapse_day: int | None,
    clock: float,
    found: Callable[[str, float], Finding],
) -> _Step:
    """One gap: from visit day `day` (its lapse moment) to the next visit's
    first activity `lo` (None: the open gap after the last visit)."""
    if lo is None:
        if moment is None or lapse_day == day:
            return _Step([], lapse_day, None, False)
        if clock > moment:
            return _Step([found("lapsed", moment)], day, None, False)
        return _Step([], lapse_day, moment, False)
    out: list[Finding] = []
    if moment is not None and moment < lo:
        if lapse_day != day:
            if clock <= moment:
                return _Step(out, lapse_day, moment, False)
            out.append(found("lapsed", moment))
            lapse_day = day
        if lo > clock:
            return _Step(out, lapse_day, lo, False)
        return _Step([*out, found("reactivated", lo)], None, None, True)
    if lo > clock:
        return _Step(out, lapse_day, lo, False)
    if lapse_day == day:
        # A late activity shows the customer came back before the moment an
        # alert was sent for: close that episode.
        return _Step([found("reactivated", lo)], None, None, True)
    return _Step(out, lapse_day, None, True)


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
    doc = {wire: getattr(f, name) for name, wire in FINDING_WIRE.items()}
    return json.dumps(doc, separators=(",", ":"))


def finding_from_json(raw: bytes | str) -> Finding:
    doc = json.loads(raw)
    values = {name: doc[wire] for name, wire in FINDING_WIRE.items()}
    return Finding(
        kind=values["kind"],
        episode=int(values["episode"]),
        ts=int(values["ts"]),
        usual_gap_days=float(values["usual_gap_days"]),
        spend_total=float(values["spend_total"]),
        span_days=float(values["span_days"]),
        segment=None if values["segment"] is None else int(values["segment"]),
    )


def alert_id(customer_id: str, f: Finding) -> str:
    return f"lapse:{customer_id}:{f.kind}:{f.episode}"
