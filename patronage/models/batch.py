"""Turn a batch of raw Kafka records into per-customer deltas and dead letters.

Pure and synchronous, so the whole ingest decision can be tested without a
broker: I/O (consume, Redis, produce) wraps it in streams/worker.py.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from patronage.models.contracts import DeadLetter, format_ts
from patronage.models.profile import Delta, to_delta
from patronage.models.validate import Accepted, Rules, validate


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class PreparedBatch:
    by_customer: dict[str, list[Delta]] = field(default_factory=dict)
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)  # per topic
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, code)
    corrected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, correction)
    max_event_ts: dict[tuple[str, int], int] = field(default_factory=dict)  # per (topic, partition)
    partition_of: dict[str, int] = field(default_factory=dict)  # customer -> partition
    watermarks: dict[int, int] = field(default_factory=dict)  # partition -> latest activity ts


def prepare_batch(
    records: Iterable[Record],
    kinds: Mapping[str, str],
    rules: Rules,
    now_ms: int,
    zone: dt.tzinfo,
) -> PreparedBatch:
    batch = PreparedBatch()
    for record in records:
        kind = kinds.get(record.topic)
        if kind is None:
            dead_letter(
                batch, record, "unknown_topic", f"no event type for topic {record.topic}", now_ms
            )
            continue
        raw = record.value if record.value is not None else b""
        outcome = validate(raw, kind, now_ms, rules)  # type: ignore[arg-type]
        if not isinstance(outcome, Accepted):
            dead_letter(batch, record, outcome.code, outcome.reason, now_ms)
            continue
        delta = to_delta(
            outcome.event,
            outcome.ts_ms,
            f"{record.topic}:{record.partition}",
            record.offset,
            rules.currencies,
            zone,
        )
        batch.by_customer.setdefault(outcome.event.customer_id, []).append(delta)
        batch.partition_of[outcome.event.customer_id] = record.partition
        if delta.k != "a":
            batch.watermarks[record.partition] = max(
                batch.watermarks.get(record.partition, 0), delta.t
            )
        batch.accepted[record.topic] += 1
        for correction in outcome.corrections:
            batch.corrected[(record.topic, correction)] += 1
        tp = (record.topic, record.partition)
        batch.max_event_ts[tp] = max(batch.max_event_ts.get(tp, 0), outcome.ts_ms)
    return batch


def dead_letter(batch: PreparedBatch, record: Record, code: str, reason: str, now_ms: int) -> None:
    raw = record.value if record.value is not None else b""
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    letter = DeadLetter(
        # Deterministic: a redelivered bad record yields the same DLQ id.
        event_id=f"dlq:{record.topic}:{record.partition}:{record.offset}",
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        error=code,
        payload=payload,
        payload_encoding=encoding,
        detected_at=format_ts(now_ms),
    )
    batch.dead_letters.append((record.key, letter))
    batch.rejected[(record.topic, code)] += 1
