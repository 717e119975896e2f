"""Turn a batch of raw Kafka records into per-customer deltas and dead letters.

Pure and synchronous, so the whole ingest decision can be tested without a
broker: I/O (consume, Redis, produce) wraps it in streams/worker.py.

Isolation is per record: whatever one record makes validation, correction,
hashing or key building raise turns that record, and only it, into a dead
letter whose reason names the exception. Nothing a record contains can reach
the agent as an exception.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from patronage.models.contracts import DeadLetter, format_ts
from patronage.models.profile import (
    CustomerDeltas,
    Delta,
    click_delta,
    order_delta,
    order_key,
    packed_customer,
    to_delta,
)
from patronage.models.sources import source_label
from patronage.models.validate import (
    Accepted,
    LineProblem,
    Rules,
    SentClick,
    SentOrder,
    sent_click,
    sent_order,
    validate,
)


class Record(NamedTuple):
    """An input record as the pipeline reads it. A tuple: the worker makes
    one of every record it fetches (and the prepare process again), and a
    frozen dataclass cost 1.2 us a record to build, a tenth of the worker's
    time (`Record._make` builds one at C speed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class PreparedBatch:
    # Delta objects as prepared; packed for Redis when it travels back from
    # the prepare process (`packed_for_redis`)
    by_customer: dict[str, CustomerDeltas] = field(default_factory=dict)
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)  # per topic
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, code)
    corrected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, correction)
    lines_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, code)
    max_event_ts: dict[tuple[str, int], int] = field(default_factory=dict)  # per (topic, partition)
    partition_of: dict[str, int] = field(default_factory=dict)  # customer -> partition
    # partition -> topic -> newest activity time (the partition's event clock)
    newest: dict[int, dict[str, int]] = field(default_factory=dict)
    # customer -> the records behind its deltas (to dead-letter them if Redis
    # refuses that customer's update as poison)
    records_of: dict[str, list[Record]] = field(default_factory=dict)


def prepare_batch(
    records: Iterable[Record],
    kinds: Mapping[str, str],
    rules: Rules,
    now_ms: int,
    zone: dt.tzinfo,
    epochs: Mapping[tuple[str, int], int] | None = None,
) -> PreparedBatch:
    """`epochs`: the current epoch of each topic partition (models/sources.py);
    absent means epoch 0."""
    batch = PreparedBatch()
    # One label object per source: pickled once (not once per delta) when
    # the batch comes back from the prepare process.
    labels: dict[tuple[str, int], str] = {}
    for record in records:
        try:
            tp = (record.topic, record.partition)
            source = labels.get(tp)
            if source is None:
                epoch = epochs.get(tp, 0) if epochs else 0
                source = labels[tp] = source_label(record.topic, record.partition, epoch)
            _prepare_one(batch, record, kinds, rules, now_ms, zone, source)
        except Exception as exc:  # the per-record guard: see the module docstring
            dead_letter(batch, record, "unprocessable", describe_exception(exc), now_ms, rules)
    return batch


def packed_for_redis(batch: PreparedBatch, source_codes: Mapping[str, str]) -> None:
    """Each customer's deltas packed as the apply script reads them, each
    source as `source_codes` stores it (streams/store.py `source_codes`)."""
    for customer_id, deltas in batch.by_customer.items():
        if isinstance(deltas, list):
            batch.by_customer[customer_id] = packed_customer(deltas, source_codes)


def describe_exception(exc: BaseException) -> str:
    text = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{type(exc).__name__} while preparing the record: {text}"[:500]


def _prepare_one(
    batch: PreparedBatch,
    record: Record,
    kinds: Mapping[str, str],
    rules: Rules,
    now_ms: int,
    zone: dt.tzinfo,
    source: str,
) -> None:
    kind = kinds.get(record.topic)
    if kind is None:
        reason = f"no event type for topic {record.topic}"
        dead_letter(batch, record, "unknown_topic", reason, now_ms, rules)
        return
    raw = record.value if record.value is not None else b""
    if _add_as_sent(batch, record, raw, kind, rules, now_ms, zone, source):
        return
    outcome = validate(raw, kind, now_ms, rules)  # type: ignore[arg-type]
    if not isinstance(outcome, Accepted):
        dead_letter(batch, record, outcome.code, outcome.reason, now_ms, rules)
        return
    # Everything that can raise happens before the batch is touched.
    delta = to_delta(
        outcome.event,
        outcome.ts_ms,
        source,
        record.offset,
        rules.currencies,
        zone,
    )
    dropped = outcome.dropped_lines
    line_letters = [_line_letter(record, problem, now_ms, rules) for problem in dropped]
    customer_id = outcome.event.profile_id
    _add(
        batch, record, delta, customer_id, outcome.ts_ms, outcome.corrections, dropped, line_letters
    )


def _add_as_sent(
    batch: PreparedBatch,
    record: Record,
    raw: bytes,
    kind: str,
    rules: Rules,
    now_ms: int,
    zone: dt.tzinfo,
    source: str,
) -> bool:
    """A click or an order validation keeps as sent, into the batch without
    its model (most of a shop's events); False for anything else."""
    if kind == "click":
        click = sent_click(raw, now_ms, rules)
        if click is None:
            return False
        delta = sent_click_delta(click, source, record.offset, zone)
        _add(batch, record, delta, click.profile_id, click.ts_ms, click.corrections, (), [])
        return True
    if kind == "customer_attributes":
        return False
    order = sent_order(raw, kind, now_ms, rules)
    if order is None:
        return False
    delta = sent_order_delta(order, source, record.offset, zone, rules.currencies)
    _add(batch, record, delta, order.profile_id, order.ts_ms, order.corrections, (), [])
    return True


def sent_click_delta(click: SentClick, source: str, offset: int, zone: dt.tzinfo) -> Delta:
    """The delta of a click taken as sent (`validate.sent_click`)."""
    return click_delta(
        click.event_id,
        click.ts_ms,
        source,
        offset,
        zone,
        click.session_id,
        click.channel,
        click.device,
    )


def sent_order_delta(
    order: SentOrder, source: str, offset: int, zone: dt.tzinfo, currencies: Mapping[str, float]
) -> Delta:
    """The delta of an order taken as sent (`validate.sent_order`)."""
    return order_delta(
        order.event_id,
        order.ts_ms,
        source,
        offset,
        zone,
        order.lines,
        currencies[order.currency],
        order.channel,
        order.payment_method,
        order_key(order.store_id, order.order_id),
        order.store_id is not None,
    )


def _add(
    batch: PreparedBatch,
    record: Record,
    delta: Delta,
    customer_id: str,
    ts_ms: int,
    corrections: tuple[str, ...],
    dropped: tuple[LineProblem, ...],
    line_letters: list[DeadLetter],
) -> None:
    """An accepted record's delta, counts and dropped lines into the batch."""
    topic, partition = record.topic, record.partition
    deltas = batch.by_customer.get(customer_id)
    if deltas is None:
        batch.by_customer[customer_id] = [delta]
        batch.records_of[customer_id] = [record]
    else:
        assert isinstance(deltas, list), "a batch is packed only once it is prepared"
        deltas.append(delta)
        batch.records_of[customer_id].append(record)
    batch.partition_of[customer_id] = partition
    if delta.kind != "attributes":
        newest = batch.newest.get(partition)
        if newest is None:
            newest = batch.newest[partition] = {}
        latest = newest.get(topic)
        if latest is None or delta.ts > latest:
            newest[topic] = delta.ts
    batch.accepted[topic] += 1
    for correction in corrections:
        batch.corrected[(topic, correction)] += 1
    if dropped:
        for problem, letter in zip(dropped, line_letters, strict=True):
            batch.dead_letters.append((record.key, letter))
            batch.lines_dropped[(topic, problem.code)] += 1
    tp = (topic, partition)
    latest = batch.max_event_ts.get(tp)
    if latest is None or ts_ms > latest:
        batch.max_event_ts[tp] = ts_ms


def bounded_payload(raw: bytes, limit: int) -> dict[str, Any]:
    """The payload fields of a dead letter: at most `limit` bytes of the
    original (UTF-8 text when it is, base64 otherwise), its length and digest."""
    cut = raw[:limit]
    try:
        payload, encoding = cut.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if len(cut) < len(raw) and exc.start >= len(cut) - 3:
            # Cut inside a multi-byte character: drop the partial character.
            payload, encoding = cut[: exc.start].decode("utf-8", "replace"), "utf-8"
        else:
            payload, encoding = base64.b64encode(cut).decode("ascii"), "base64"
    return {
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_truncated": len(cut) < len(raw),
    }


def dead_letter(
    batch: PreparedBatch,
    record: Record,
    code: str,
    reason: str,
    now_ms: int,
    rules: Rules,
) -> None:
    raw = record.value if record.value is not None else b""
    letter = DeadLetter(
        # Deterministic: a redelivered bad record yields the same DLQ id.
        event_id=f"dlq:{record.topic}:{record.partition}:{record.offset}",
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=_printable(reason),
        error=code,
        detected_at=format_ts(now_ms),
        **bounded_payload(raw, rules.dlq_payload_max_bytes),
    )
    batch.dead_letters.append((record.key, letter))
    batch.rejected[(record.topic, code)] += 1


def _line_letter(record: Record, problem: LineProblem, now_ms: int, rules: Rules) -> DeadLetter:
    """A line-level letter: the line dropped from a receipt that was kept."""
    raw = json.dumps(problem.line, ensure_ascii=True, default=str).encode("ascii")
    return DeadLetter(
        event_id=f"dlq:{record.topic}:{record.partition}:{record.offset}:line:{problem.index}",
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=_printable(f"line dropped, rest of the receipt kept: {problem.reason}"),
        error=problem.code,
        detected_at=format_ts(now_ms),
        line=problem.index,
        **bounded_payload(raw, rules.dlq_payload_max_bytes),
    )


def _printable(text: str) -> str:
    # A reason may quote the input; a lone surrogate in it cannot be encoded.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
