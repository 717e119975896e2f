"""What one promotion costs the learner: the refit and its checkpoint.

    python -m benchmarks.bench_refit [--vectors 10000] [--rounds 5]

A trainer holding a full sample (a third of the customers with an undefined
feature, as one-visit customers have) is refitted as the worker's fit
process does at every promotion (`refit_with_checkpoint`). Printed, the
median of the rounds in milliseconds: the k-means fit, the checkpoint text
as written now (orjson) and with the standard library (the baseline, in the
same run), reading a checkpoint back (a worker taking the learner over),
pickling the trainer to the fit process (the only part left on the worker's
event loop), and freezing the fit into a version (done in the fit process
now; the event loop did it before, at every promotion).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pickle
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from patronage.models.features import FEATURES
from patronage.models.segments import SegmentTrainer, checkpoint_text, read_checkpoint


def sampled_trainer(vectors: int, seed: int = 1) -> SegmentTrainer:
    rng = random.Random(seed)
    centres = [[rng.uniform(-2, 2) for _ in FEATURES] for _ in range(5)]
    trainer = SegmentTrainer(sample_size=vectors, warmup=200, warmup_days=0)
    for i in range(vectors):
        x = {k: c + rng.gauss(0, 0.5) for k, c in zip(FEATURES, rng.choice(centres), strict=True)}
        if i % 3 == 0:
            x[FEATURES[1]] = math.nan
        rfm = [rng.uniform(0, 90), rng.uniform(0, 5), rng.lognormvariate(3, 1)]
        trainer.learn(f"c{i:07d}", x, rng.choice(["grocery", "drinks", "toys"]), rfm)
    trainer.freeze(1)  # a promoted model: later refits warm-start from it
    return trainer


def median_ms(work: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def run(vectors: int, rounds: int) -> dict[str, Any]:
    trainer = sampled_trainer(vectors)
    text = checkpoint_text(trainer)
    fit = trainer.fit()
    assert fit is not None
    return {
        "sampled_vectors": vectors,
        "fit_ms": median_ms(trainer.fit, rounds),
        "checkpoint_orjson_ms": median_ms(lambda: checkpoint_text(trainer), rounds),
        "checkpoint_standard_library_ms": median_ms(
            lambda: json.dumps(trainer.to_checkpoint()), rounds
        ),
        "checkpoint_bytes": len(text),
        "read_checkpoint_ms": median_ms(lambda: read_checkpoint(text), rounds),
        "pickle_to_fit_process_ms": median_ms(lambda: pickle.dumps(trainer), rounds),
        "freeze_ms": median_ms(lambda: copy.copy(trainer).freeze(2, fit), rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_refit")
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.vectors, args.rounds)))


if __name__ == "__main__":
    main()
