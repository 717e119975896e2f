"""Order history (rows of a CSV or Parquet file) -> contract events, in time order.

The column mapping names which of the user's columns hold what; only
customer id, timestamp and amount are required. Rows that share an order id
become one event with several lines. A row with a store is a store receipt,
otherwise an online purchase. Every event is validated with the same rules
as the worker, so rejected rows are reported here instead of landing in the DLQ.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from patronage.models.validate import Accepted, Rules, validate

REQUIRED = ("customer_id", "ts", "amount")
OPTIONAL = ("order_id", "sku", "category", "quantity", "unit_price", "store", "channel", "currency")


@dataclass
class Converted:
    events: list[dict[str, Any]] = field(default_factory=list)  # time-ordered, each with "type"
    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason code -> rows
    examples: dict[str, str] = field(default_factory=dict)  # reason code -> one full reason
    # Kept events: corrections the worker will make, and lines it will drop.
    corrected: Counter[str] = field(default_factory=Counter)
    lines_dropped: Counter[str] = field(default_factory=Counter)


def parse_mapping(spec: str) -> dict[str, str]:
    """'customer_id=cust,ts=date,amount=total' -> {'customer_id': 'cust', ...}."""
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise ValueError(f"mapping entry {part!r} is not name=column")
        if name not in REQUIRED + OPTIONAL:
            raise ValueError(f"unknown field {name!r}; use {', '.join(REQUIRED + OPTIONAL)}")
        mapping[name] = column
    missing = [n for n in REQUIRED if n not in mapping]
    if missing:
        raise ValueError(f"the mapping needs {', '.join(missing)}")
    return mapping


def convert(
    rows: Iterable[Mapping[str, Any]],
    mapping: Mapping[str, str],
    rules: Rules,
    now_ms: int,
    default_currency: str = "EUR",
) -> Converted:
    out = Converted()
    orders: dict[str, dict[str, Any]] = {}
    order_rows: Counter[str] = Counter()

    def col(row: Mapping[str, Any], name: str) -> str:
        value = row.get(mapping[name]) if name in mapping else None
        return "" if value is None else str(value).strip()

    for number, row in enumerate(rows, start=1):
        out.rows += 1
        customer = col(row, "customer_id")
        try:
            amount = Decimal(col(row, "amount"))
            # Decimal: weighed goods and fuel are sold by measure.
            quantity = Decimal(col(row, "quantity")) if col(row, "quantity") else Decimal(1)
            unit = Decimal(col(row, "unit_price")) if col(row, "unit_price") else None
        except (InvalidOperation, ValueError):
            out.rejected["not_a_number"] += 1
            out.examples.setdefault("not_a_number", f"row {number}: amount, quantity or price")
            continue
        if unit is None:
            unit = amount / quantity if quantity else amount
        order_id = col(row, "order_id") or f"row-{number}"
        key = f"{customer}\x00{order_id}"
        store = col(row, "store")
        event = orders.get(key)
        if event is None:
            event = orders[key] = _order_event(col, row, number, store, default_currency)
        event["items"].append(
            {
                "sku": col(row, "sku") or "unknown",
                "category": col(row, "category") or None,
                "quantity": int(quantity) if quantity == int(quantity) else float(quantity),
                "unit_price": float(unit),
            }
        )
        event["total"] += amount if col(row, "unit_price") == "" else unit * quantity
        order_rows[key] += 1

    for key, event in orders.items():
        _validated(out, event, order_rows[key], rules, now_ms)
    out.events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return out


def _order_event(
    col: Callable[[Mapping[str, Any], str], str],
    row: Mapping[str, Any],
    number: int,
    store: str,
    default_currency: str,
) -> dict[str, Any]:
    """A new order event from its first row (lines are added by the caller)."""
    order_id = col(row, "order_id") or f"row-{number}"
    event: dict[str, Any] = {
        "type": "store_receipt" if store else "purchase",
        "event_id": f"replay:{order_id}",
        "customer_id": col(row, "customer_id"),
        "ts": _ts(col(row, "ts")),
        "currency": (col(row, "currency") or default_currency).upper(),
        "items": [],
        "total": Decimal(0),
    }
    if store:
        event["receipt_id"] = order_id
        event["store_id"] = store
    else:
        event["order_id"] = order_id
        channel = col(row, "channel")
        if channel:
            event["channel"] = channel
    return event


def _validated(out: Converted, event: dict[str, Any], rows: int, rules: Rules, now_ms: int) -> None:
    """Validate a converted order with the worker's rules; keep it or count why not."""
    event["total"] = float(event["total"])
    raw = json.dumps(event, default=str).encode()
    outcome = validate(raw, event["type"], now_ms, rules)
    if isinstance(outcome, Accepted):
        event["ts"] = outcome.ts_ms
        out.events.append(event)
        out.corrected.update(outcome.corrections)
        for problem in outcome.dropped_lines:
            out.lines_dropped[problem.code] += 1
            out.examples.setdefault(problem.code, f"{event['event_id']}: {problem.reason}")
    else:
        out.rejected[outcome.code] += rows
        out.examples.setdefault(outcome.code, f"{event['event_id']}: {outcome.reason}")


def _ts(text: str) -> str | int:
    """Epoch ms as int, anything else as text for the contract's parser."""
    if text.isdigit():
        return int(text)
    if " " in text and "T" not in text:
        return text.replace(" ", "T", 1)  # '2026-03-01 10:00:00' -> RFC 3339 shape
    return text
