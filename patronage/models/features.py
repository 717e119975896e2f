"""The segmentation feature vector of a profile at a given `now`.

Fixed order and meaning (documented in the README); skewed quantities are
log-scaled here, standardisation happens online in the segmenter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from patronage.models.profile import gap_stats, map_entries
from patronage.models.timeunits import DAY_MS

FEATURES = (
    "visit_gap_log_days",  # log1p(mean days between visit days; 0 below two visits)
    "frequency_log",  # log1p(orders, 30-day half-life, as of the last activity)
    "monetary_log",  # log1p(net spend, 30-day half-life, as of the last activity)
    "avg_basket_log",  # log1p(bought value per order; undefined without orders)
    "online_share",  # online orders / orders (browsing-only: 1)
    "browse_to_buy_log",  # log1p(clicks per order)
    "category_concentration",  # Herfindahl index of category spend, 0..1 (undefined: none)
    "regularity",  # 1 / (1 + coefficient of variation of visit gaps)
    "tenure_log_days",  # log1p(days from first to last activity)
    "return_rate",  # returned value / bought value (undefined: nothing bought)
)
# A ratio with nothing under it (the basket of a customer with no orders) is
# unknown, not 0: it stays NaN here and sits at the population mean once
# standardised. Read as 0 it put every not-yet-buying browser 3 standard
# deviations out on three dimensions at once, and the first model spent a
# segment on that transient state; when it emptied, a re-organised model
# moved a fifth of the customers (docs/benchmarks.md, issue #13).
UNDEFINED = math.nan


def defined(x: Mapping[str, float]) -> dict[str, float]:
    """The defined features only (what goes on the wire: JSON has no NaN)."""
    return {k: v for k, v in x.items() if not math.isnan(v)}


def _num(fields: Mapping[str, float | str], name: str) -> float:
    value = fields.get(name)
    return float(value) if value is not None else 0.0


def category_spend(fields: Mapping[str, float | str]) -> dict[str, float]:
    """Spend per category (and `_other`): read once per profile and passed
    to `features` and `top_category`, since the scan over every field was
    most of what each of them cost (docs/benchmarks.md)."""
    return map_entries(fields, "cat:")


def features(
    fields: Mapping[str, float | str], categories: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Feature dict (keys = FEATURES) of one profile: how the customer
    behaves, as of their last activity — so the same profile has the same
    vector whenever it is scored (how long ago that activity was is recency,
    scored by RFM and watched by lapse alerts, not a behaviour).
    `categories`: `category_spend(fields)` when the caller has it."""
    orders = _num(fields, "orders")
    clicks = _num(fields, "clicks")
    bought = _num(fields, "basket_sum")
    if categories is None:
        categories = category_spend(fields)
    category_spend_values = [max(0.0, v) for v in categories.values()]
    total_category = sum(category_spend_values)
    concentration = (
        sum((v / total_category) ** 2 for v in category_spend_values) if total_category > 0 else 0.0
    )
    mean_gap, std_gap = gap_stats(fields)
    regularity = 0.0
    if mean_gap is not None and std_gap is not None and _num(fields, "visits") >= 3:
        regularity = 1.0 / (1.0 + std_gap / mean_gap) if mean_gap > 0 else 0.0
    active_ms = max(0.0, _num(fields, "last_seen") - _num(fields, "first_seen"))
    return {
        "visit_gap_log_days": math.log1p(mean_gap or 0.0),
        "frequency_log": math.log1p(max(0.0, _num(fields, "freq_decayed"))),
        "monetary_log": math.log1p(max(0.0, _num(fields, "monetary_decayed"))),
        "avg_basket_log": math.log1p(bought / orders) if orders > 0 else UNDEFINED,
        "online_share": _num(fields, "orders_online") / orders if orders > 0 else 1.0,
        "browse_to_buy_log": math.log1p(clicks / max(1.0, orders)),
        "category_concentration": concentration if total_category > 0 else UNDEFINED,
        "regularity": regularity,
        "tenure_log_days": math.log1p(active_ms / DAY_MS),
        "return_rate": (
            min(1.0, _num(fields, "returns_value") / bought) if bought > 0 else UNDEFINED
        ),
    }


def rfm_inputs(
    fields: Mapping[str, float | str], now_ms: float, half_life_ms: float
) -> tuple[float, float, float]:
    """Recency (days since the last activity), frequency and monetary value
    (30-day half-life) at `now_ms`: what the RFM quintiles score."""
    last_seen = _num(fields, "last_seen") if "last_seen" in fields else now_ms
    idle_ms = max(0.0, now_ms - last_seen)
    decay = 2.0 ** (-idle_ms / half_life_ms)
    return (
        idle_ms / DAY_MS,
        max(0.0, _num(fields, "freq_decayed") * decay),
        max(0.0, _num(fields, "monetary_decayed") * decay),
    )


def top_category(
    fields: Mapping[str, float | str], categories: Mapping[str, float] | None = None
) -> str | None:
    best: tuple[float, str] | None = None
    if categories is None:
        categories = category_spend(fields)
    for key, value in categories.items():
        if key != "_other":
            candidate = (value, key)
            if best is None or candidate > best:
                best = candidate
    return best[1] if best is not None and best[0] > 0 else None
