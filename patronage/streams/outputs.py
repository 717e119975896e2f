"""Reading the output topics: lapse alerts and segment changes, for people."""

from __future__ import annotations

import json
import time

from patronage.streams.settings import Settings


async def tail_alerts(
    settings: Settings,
    from_beginning: bool,
    limit: int | None,
    idle_timeout: float | None,
    since_ms: int | None = None,
    only: str | None = None,
) -> None:
    from aiokafka import AIOKafkaConsumer

    topics = []
    if only in (None, "lapse"):
        topics.append(settings.topic(settings.topic_lapse_alerts))
    if only in (None, "segments"):
        topics.append(settings.topic(settings.topic_segment_changes))
    consumer = AIOKafkaConsumer(
        *topics,
        **settings.kafka_client_kwargs(),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    shown = 0
    last = time.monotonic()
    try:
        while limit is None or shown < limit:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    if limit is not None and shown >= limit:
                        break
                    print(alert_line(record.topic, record.value), flush=True)
                    shown += 1
                    last = time.monotonic()
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()


def alert_line(topic: str, value: bytes | None) -> str:
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return f"{topic}: {value!r}"
    kind = doc.get("kind")
    if kind == "at_risk":
        return (
            f"{doc['ts']}  at_risk     {doc['customer_id']:<12} "
            f"last order {doc['last_order_at'][:10]}  p_alive {doc['p_alive']:.2f} "
            f"(below {doc['threshold']:.2f})  CLV {doc['predicted_clv_365d']:.2f}"
            f"  segment {doc['segment']}"
        )
    if kind == "tier":
        return (
            f"{doc['ts']}  tier       {doc['customer_id']:<12} "
            f"{doc['previous_tier']} -> {doc['tier']} (CLV {doc['predicted_clv_365d']:.2f}, "
            f"{doc['reason']}, parameters v{doc['parameters_version']})"
        )
    if kind in ("lapsed", "reactivated"):
        return (
            f"{doc['ts']}  {doc['kind']:<11} {doc['customer_id']:<12} "
            f"last seen {doc['last_seen'][:10]}  {doc['days_since_last_visit']:6.1f} d "
            f"(usual {doc['usual_gap_days']:.1f} d)  at risk {doc['value_at_risk']:.2f}"
            f"  segment {doc['segment']}"
        )
    return (
        f"{doc.get('ts')}  segment    {doc.get('customer_id'):<12} "
        f"{doc.get('previous_segment')} -> {doc.get('segment')} {doc.get('segment_label', '')} "
        f"({doc.get('reason')}, model v{doc.get('model_version')})"
    )
