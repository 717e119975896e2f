"""Segment quality on a realistic population: the simulator's shoppers,
replayed as a stream through the whole pipeline.

    python -m benchmarks.bench_personas [--customers 500] [--days 180] [--seeds 1 2 3]

Each seed's history (hidden personas: weekly store shoppers, online
browsers, omnichannel VIPs, bargain hunters, one-off buyers; a fifth of them
lapse) is replayed in time order, in batches, through `Pipeline` with
in-memory stores: validation, profiles, scoring, the feature topic, the
single learner, promotions and re-scoring run as in the worker; the clock is
the newest event time. At the end it prints, per seed:

* online ARI: the segments the pipeline assigned, against the true personas;
* batch ARI: sklearn KMeans (10 starts) on the same features of the same
  final profiles, against the true personas;
* segment changes, and the share that were model-driven (reason
  `model_update`: the model moved, not the customer);
* promotions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from patronage.models.batch import Record
from patronage.models.contracts import routing_key
from patronage.models.features import FEATURES
from patronage.models.simulate import IDENTITY_TYPES, generate
from patronage.streams.memory import (
    MemoryModelStore,
    MemoryProfileStore,
    RecordingProducer,
    StaticLog,
)
from patronage.streams.pipeline import Pipeline
from patronage.streams.segmenting import partition_for
from patronage.streams.settings import Settings

START_MS = 1_735_689_600_000  # 2025-01-01


def records_of(events: list[dict[str, Any]], settings: Settings) -> list[Record]:
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for event in events:
        if event["type"] in IDENTITY_TYPES:
            continue  # on `identities`, not an input topic
        topic = settings.topic_for_kind[event["type"]]
        key = routing_key(event) or ""
        partition = partition_for(key, settings.partitions)
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        value = json.dumps(event).encode()
        records.append(Record(topic, partition, offset, key.encode(), value))
    return records


async def replay(
    pipe: Pipeline, producer: RecordingProducer, records: list[Record], batch: int, now: list[int]
) -> None:
    """Batches in time order; after each, the learner reads the features
    topic and the model refresh runs, as the worker's agent and timer do."""
    partitions = set(range(pipe.settings.partitions))
    features = pipe.settings.topic(pipe.settings.topic_segment_features)
    read = 0
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        now[0] = max(json.loads(r.value or b"")["ts"] for r in chunk)
        await pipe.process(chunk, StaticLog())
        vectors = [json.loads(v) for t, _, v in producer.sent[read:] if t == features]
        read = len(producer.sent)
        if vectors:
            await pipe.learner.learn(vectors)
        await pipe.refresh_model(partitions)
        if pipe.rescoring is not None:
            await pipe.rescoring


def evaluate(
    store: MemoryProfileStore, personas: dict[str, str], settings: Settings, end_ms: int, seed: int
) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    from patronage.models.features import features

    customers = sorted(c for c, s in store.states.items() if "last_seen" in s.fields)
    fields = {c: store._fields(store.states[c]) for c in customers}
    truth = [personas[c] for c in customers]
    matrix = [[features(fields[c])[k] for k in FEATURES] for c in customers]
    # An undefined feature (no orders -> no basket) at the mean, as the segmenter does.
    scaled = StandardScaler().fit_transform(SimpleImputer(strategy="mean").fit_transform(matrix))
    batch = KMeans(n_clusters=settings.segments, n_init=10, random_state=seed).fit_predict(scaled)
    online = [int(float(fields[c].get("segment", -1))) for c in customers]
    return {
        "customers": len(customers),
        "online_ari": round(adjusted_rand_score(truth, online), 3),
        "batch_ari": round(adjusted_rand_score(truth, batch), 3),
        "online_vs_batch_ari": round(adjusted_rand_score(batch, online), 3),
        "unsegmented": online.count(-1),
    }


def run_seed(customers: int, days: int, seed: int, batch: int) -> dict[str, Any]:
    # A small shop: the first model once 200 customers are sampled.
    settings = Settings(lapse_clock="event", segment_warmup=min(500, customers * 2 // 5))
    events, personas = generate(customers, days, seed, START_MS)
    records = records_of(events, settings)
    now = [START_MS]
    store = MemoryProfileStore(settings.profile_config)
    producer = RecordingProducer()
    models = MemoryModelStore()
    pipe = Pipeline(settings, store, models, producer, clock=lambda: now[0] / 1000)
    asyncio.run(replay(pipe, producer, records, batch, now))
    result = evaluate(store, personas, settings, now[0], seed)
    changes = [
        c
        for c in producer.on(settings.topic(settings.topic_segment_changes))
        if c.get("kind", "segment") == "segment"  # not the value tier changes
    ]
    moves = [c for c in changes if c["previous_segment"] is not None]
    driven = sum(1 for c in moves if c["reason"] == "model_update")
    result.update(
        events=len(records),
        promotions=models.version,
        segment_changes=len(changes),
        moves=len(moves),
        model_driven_share=round(driven / len(moves), 3) if moves else 0.0,
        sizes=sorted(
            (sum(1 for s in store.states.values() if s.fields.get("segment") == str(k)))
            for k in range(settings.segments)
        ),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_personas")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch", type=int, default=500, help="records per batch")
    args = parser.parse_args()
    for seed in args.seeds:
        result = run_seed(args.customers, args.days, seed, args.batch)
        print(json.dumps({"seed": seed, **result}))


if __name__ == "__main__":
    main()
