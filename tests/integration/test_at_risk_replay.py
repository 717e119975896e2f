"""At-risk alerts on a replayed order history (event clock), real Kafka + Redis.

The CDNOW sample (2,357 customers, 1997-98), one order per customer and day
as the papers count them, with the published-data fit of the calibration
period as the parameters; replayed in time order through a worker that is
killed with SIGKILL halfway and replaced. The `at_risk` alerts on the
lapse-alerts topic must be exactly those of the definition (p_alive of the
history up to a purchase falls below the threshold before the next purchase),
computed independently from the rows with lifetimes' p_alive — none missing,
none extra, each id with one content however often it was sent.

A unit test with the in-memory store cannot catch what this does: the
Lua apply keeping the unjudged orders, the risk queue in Redis moving with
the partitions across a crash, and Kafka redelivering the batches the dead
worker had not committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from patronage.models.predict import FittedParameters, fit_population
from patronage.streams.segmenting import ModelStore
from patronage.streams.store import make_redis
from tests.integration.harness import (
    Worker,
    drained,
    on_cluster,
    read_topic,
    redis_client,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import publish_with_metadata
from tests.integration.test_lapse_replay import replay_env, sweeps_done
from tests.integration.test_public_histories import AS_OF_MS, batch_histories, cdnow_setup
from tests.integration.test_reliability import record
from tests.unit.test_risk import reference_alerts_with

DAY_MS = 86_400_000
CHUNK_DAYS = 28
LATENESS_S = 2 * 86_400
THRESHOLD = 0.3


def day_orders(source: Path) -> dict[str, list[tuple[int, float]]]:
    """customer -> (day ms, value) of each day with a positive total."""
    spent: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for line in source.read_text().splitlines():
        _, customer, day, _, value = line.split()
        spent[customer][day] = spent[customer].get(day, Decimal(0)) + Decimal(value)
    orders = {}
    for customer, days in spent.items():
        rows = [
            (int(dt.datetime.strptime(d, "%Y%m%d").replace(tzinfo=dt.UTC).timestamp() * 1000), v)
            for d, v in sorted(days.items())
            if v > 0
        ]
        if rows:
            orders[customer] = [(ts, float(v)) for ts, v in rows]
    return orders


def purchase(customer: str, ts: int, value: float) -> dict[str, Any]:
    return {
        "event_id": f"cdnow-{customer}-{ts}",
        "customer_id": customer,
        "ts": ts,
        "order_id": f"{customer}/{ts}",
        "currency": "USD",
        "items": [{"sku": "cd", "quantity": 1, "unit_price": f"{value:.2f}"}],
        "total": f"{value:.2f}",
    }


def test_cdnow_at_risk_alerts_equal_the_definition_across_a_kill(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    env, _, source = cdnow_setup(backend_env)
    env = {
        **replay_env(env, LATENESS_S),
        "PATRONAGE_PREDICTION_AT_RISK_THRESHOLD": str(THRESHOLD),
    }
    settings = settings_with_topics(env)
    # The parameters: the calibration period fitted in batch (the published
    # values within 1 %, tests/integration/test_public_histories.py), saved
    # as a fresh version so the worker's learner does not refit them.
    fitted = fit_population(batch_histories(source, "19971001"), 1, AS_OF_MS)
    assert isinstance(fitted, FittedParameters)
    fitted = FittedParameters(
        1,
        fitted.purchases,
        fitted.spend,
        fitted.customers,
        int(time.time() * 1000),
        fitted.clv_cuts,
    )

    async def save() -> None:
        client = make_redis(env["PATRONAGE_REDIS_URL"], cluster=settings.redis_cluster)
        await ModelStore(client, settings.key_prefix).save_parameters(fitted)
        await client.aclose()

    asyncio.run(save())

    orders = day_orders(source)
    start = min(ts for rows in orders.values() for ts, _ in rows)
    chunks: list[list[tuple[str, str | None, bytes]]] = defaultdict(list)  # type: ignore[assignment]
    for customer, rows in orders.items():
        for ts, value in rows:
            payload = json.dumps(purchase(customer, ts, value)).encode()
            chunks[(ts - start) // (CHUNK_DAYS * DAY_MS)].append(("purchases", customer, payload))
    numbers = sorted(chunks)

    partition_of: dict[str, int] = {}
    client = redis_client(env)
    worker = Worker(env, name="at-risk-1").start()
    faults = []
    try:
        for number in numbers:
            chunk = sorted(chunks[number], key=lambda row: json.loads(row[2])["ts"])
            metadata = publish_with_metadata(settings, chunk)
            for (_, customer, _), (_, partition, _) in zip(chunk, metadata, strict=True):
                partition_of[customer or ""] = partition
            if number == numbers[len(numbers) // 2]:
                worker.kill()  # mid-replay, no goodbye
                worker = Worker(env, name="at-risk-2").start()
                faults.append(f"kill at chunk {number}")
            wait_for(lambda: drained(settings), 120, f"chunk {number}", worker.check_alive)
        wait_for(
            lambda: sweeps_done(settings, client, set(partition_of.values()), LATENESS_S, "risk"),
            90,
            "final at-risk sweeps",
            worker.check_alive,
        )
    finally:
        worker.stop()

    newest: dict[int, int] = defaultdict(int)
    for customer, rows in orders.items():
        p = partition_of[customer]
        newest[p] = max(newest[p], rows[-1][0])
    expected: dict[str, int] = {}
    for customer, rows in orders.items():
        clock = newest[partition_of[customer]] - LATENESS_S * 1000
        for episode, moment in reference_alerts_with(
            fitted.purchases, rows, clock, THRESHOLD
        ).items():
            expected[f"at_risk:{customer}:{episode}"] = moment

    alerts = [json.loads(r.value) for r in read_topic(settings, settings.topic("lapse-alerts"))]
    at_risk = [a for a in alerts if a["kind"] == "at_risk"]
    by_id: dict[str, dict[str, Any]] = {}
    for alert in at_risk:
        same = {k: v for k, v in alert.items() if k != "segment"}
        if alert["event_id"] in by_id:
            # A re-send after the crash: the same alert (the segment may have
            # been re-scored in between).
            assert same == {k: v for k, v in by_id[alert["event_id"]].items() if k != "segment"}
        by_id.setdefault(alert["event_id"], alert)
    assert len(expected) > 500, "the history must hold many at-risk episodes"
    assert set(by_id) == set(expected)
    for event_id, alert in by_id.items():
        when = dt.datetime.fromisoformat(alert["ts"].replace("Z", "+00:00")).timestamp() * 1000
        assert abs(when - expected[event_id]) <= 1, event_id
        assert abs(alert["p_alive"] - THRESHOLD) < 1e-4 or alert["p_alive"] < THRESHOLD
    record(
        "at-risk alerts, CDNOW, kill -9 mid-replay" + on_cluster(env),
        customers=len(orders),
        faults=faults,
        expected_alerts=len(expected),
        distinct_alert_ids=len(by_id),
        alert_messages=len(at_risk),
    )
