"""The erasure protocol, client side: request on `erasure-requests`, wait for
the worker's confirmation (matched by request id) on `erasure-confirmations`.
The worker side is Pipeline.erase (streams/pipeline.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from patronage.streams.settings import Settings


async def request_erasure(
    settings: Settings, customer_id: str, wait_s: float
) -> dict[str, Any] | None:
    import uuid

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    request_id = uuid.uuid4().hex
    confirmations = settings.topic(settings.topic_erasure_confirmations)
    consumer = AIOKafkaConsumer(
        confirmations, **settings.kafka_client_kwargs(), auto_offset_reset="latest"
    )
    if wait_s:
        await consumer.start()
        await consumer.seek_to_end()
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        request = {
            "request_id": request_id,
            "customer_id": customer_id,
            "ts": int(time.time() * 1000),
        }
        await producer.send_and_wait(
            settings.topic(settings.topic_erasure_requests),
            json.dumps(request).encode(),
            key=customer_id.encode(),
        )
        if not wait_s:
            return None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    doc = json.loads(record.value or b"{}")
                    if doc.get("request_id") == request_id:
                        confirmation: dict[str, Any] = doc
                        return confirmation
        return None
    finally:
        await producer.stop()
        if wait_s:
            await consumer.stop()
