"""What scoring one applied profile costs in Python, per step, without Redis or Kafka.

    python -m benchmarks.bench_scoring [--customers 500] [--repeats 5]

Builds profiles by running the simulated backlog through the pipeline with
its in-memory store, then times, per profile, the scoring steps a worker
runs after every apply: the feature vector and the learner's vector (with
its top category), and the segment decision (`models.segments.decide`, on a
model learnt from the same profiles). The vectors two ways in one run: each
reading the profile's category map itself (two scans of every field: the
code before the change) and one scan shared by both (what `Pipeline._score`
does). Best of `--repeats`; `compiled_modules` says which form ran
(PATRONAGE_COMPILED=on/off to compare).
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable

from benchmarks.bench_personas import records_of
from patronage import compiled
from patronage.models.features import category_spend, features, rfm_inputs
from patronage.models.segments import SegmentTrainer, decide
from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from patronage.streams.memory import (
    MemoryModelStore,
    MemoryProfileStore,
    RecordingProducer,
    stored_fields,
)
from patronage.streams.pipeline import Pipeline
from patronage.streams.segmenting import feature_vector
from patronage.streams.settings import Settings

Fields = dict[str, float | str]


def simulated_profiles(customers: int, settings: Settings) -> list[Fields]:
    now_ms = int(time.time() * 1000)
    events, _ = generate(customers, 90, seed=3, start_ms=(now_ms // DAY_MS - 90) * DAY_MS)
    records = records_of(events, settings)
    store = MemoryProfileStore(settings.profile_config)
    pipe = Pipeline(settings, store, MemoryModelStore(), RecordingProducer())
    size = settings.batch_max
    pipe.test(records[i : i + size] for i in range(0, len(records), size))
    return [stored_fields(state) for state in store.states.values()]


def per_profile_us(step: Callable[[], object], count: int, repeats: int) -> float:
    best = min(timeit.repeat(step, number=3, repeat=repeats)) / 3
    return round(best / count * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scoring")
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    profiles = simulated_profiles(args.customers, settings)
    now_ms = time.time() * 1000
    half_life = settings.profile_config.half_life_ms

    def separate_scans() -> None:
        for fields in profiles:
            x = features(fields)
            feature_vector("c", x, fields, rfm_inputs(fields, now_ms, half_life))

    def shared_scan() -> None:
        for fields in profiles:
            spend = category_spend(fields)
            x = features(fields, spend)
            feature_vector("c", x, fields, rfm_inputs(fields, now_ms, half_life), spend)

    trainer = SegmentTrainer(seed=1, warmup=min(200, len(profiles)), warmup_days=0.0)
    active = [(f, features(f, category_spend(f))) for f in profiles if "last_seen" in f]
    for i, (fields, x) in enumerate(active):
        trainer.learn(f"c{i}", x, None, rfm_inputs(fields, now_ms, half_life))
    model = trainer.freeze(int(now_ms))
    hysteresis = settings.segment_hysteresis

    def decisions() -> None:
        for fields, x in active:
            decide(fields, x, model, None, hysteresis, rfm_inputs(fields, now_ms, half_life))

    fields_per_profile = sum(map(len, profiles)) / len(profiles)
    print(
        json.dumps(
            {
                "profiles": len(profiles),
                "fields_per_profile": round(fields_per_profile, 1),
                "features_and_vector_two_scans_us": per_profile_us(
                    separate_scans, len(profiles), args.repeats
                ),
                "features_and_vector_one_scan_us": per_profile_us(
                    shared_scan, len(profiles), args.repeats
                ),
                "category_scan_us": per_profile_us(
                    lambda: [category_spend(f) for f in profiles], len(profiles), args.repeats
                ),
                "segment_decision_us": (
                    per_profile_us(decisions, len(active), args.repeats) if model else None
                ),
                "compiled_modules": compiled.in_use(),
            }
        )
    )


if __name__ == "__main__":
    main()
