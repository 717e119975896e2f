"""Segment quality on a replayed synthetic mixture with known segments.

    python -m benchmarks.bench_segments [--customers 3000] [--updates 20] [--k 5] [--seed 1]

Customers belong to hidden segments (Gaussian blobs in feature space); the
stream replays each customer several times (each update a fresh noisy draw
around the customer's own position), interleaved. For each segmenter it
prints: adjusted Rand index against the truth (final model, final features),
the same for batch sklearn KMeans on the final features, segment-change
events, and the share of them that are model-driven (the customer's previous
features already land in the new segment under the current model: the model
moved, not the customer).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from patronage.models.features import FEATURES
from patronage.models.segments import SegmentTrainer


def mixture(customers: int, k: int, seed: int) -> tuple[list[list[float]], list[int], float]:
    rng = random.Random(seed)
    dims = len(FEATURES)
    centres = [[rng.uniform(-1.6, 1.6) for _ in range(dims)] for _ in range(k)]
    truth = [rng.randrange(k) for _ in range(customers)]
    positions = [[c + rng.gauss(0, 0.45) for c in centres[t]] for t in truth]
    return positions, truth, 0.3  # per-update noise around the customer's position


def stream(
    positions: list[list[float]], updates: int, noise: float, seed: int
) -> list[tuple[int, dict[str, float]]]:
    rng = random.Random(seed + 1)
    order = [c for c in range(len(positions)) for _ in range(updates)]
    rng.shuffle(order)
    return [
        (
            c,
            {
                name: value + rng.gauss(0, noise)
                for name, value in zip(FEATURES, positions[c], strict=True)
            },
        )
        for c in order
    ]


def run_online(
    events: list[tuple[int, dict[str, float]]],
    customers: int,
    learn: Callable[[int, dict[str, float]], None],
    predict: Callable[[dict[str, float]], int | None],
    hysteresis_assign: Callable[[dict[str, float], int | None], int | None] | None = None,
) -> dict[str, Any]:
    segment: list[int | None] = [None] * customers
    previous_x: list[dict[str, float] | None] = [None] * customers
    changes = model_driven = 0
    for customer, x in events:
        learn(customer, x)
        current = segment[customer]
        new = hysteresis_assign(x, current) if hysteresis_assign else predict(x)
        if new is None:  # no model yet: nobody has a segment
            continue
        if current is not None and new != current:
            changes += 1
            before = previous_x[customer]
            # Same model, same assignment rule (hysteresis included), the
            # customer's previous features: would they have moved too?
            judged = (
                hysteresis_assign(before, current)
                if hysteresis_assign and before
                else (predict(before) if before else None)
            )
            if judged == new:
                model_driven += 1
        segment[customer] = new
        previous_x[customer] = x
    return {
        "changes": changes,
        "model_driven": model_driven,
        "model_driven_share": model_driven / changes if changes else 0.0,
    }


def main() -> None:
    from river import cluster, compose, preprocessing
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_segments")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hysteresis", type=float, default=0.1)
    args = parser.parse_args()

    positions, truth, noise = mixture(args.customers, args.k, args.seed)
    events = stream(positions, args.updates, noise, args.seed)
    final = [dict(zip(FEATURES, p, strict=True)) for p in positions]
    results: dict[str, Any] = {"customers": args.customers, "events": len(events), "k": args.k}

    # Batch reference: sklearn KMeans on the standardised final features.
    matrix = StandardScaler().fit_transform([list(x.values()) for x in final])
    batch = KMeans(n_clusters=args.k, n_init=10, random_state=args.seed).fit_predict(matrix)
    results["sklearn_batch_kmeans_ari"] = adjusted_rand_score(truth, batch)

    # Ours: learn online, promote a frozen model every 1000 updates, score with it.
    trainer = SegmentTrainer(n_clusters=args.k, seed=args.seed, warmup_days=0)
    state: dict[str, Any] = {"model": None}

    def learn(customer: int, x: dict[str, float]) -> None:
        trainer.learn(f"c{customer}", x)
        if trainer.updates % 1000 == 0:
            state["model"] = trainer.freeze(trainer.updates) or state["model"]

    def predict(x: dict[str, float]) -> int | None:
        return state["model"].predict(x) if state["model"] else None

    def assign(x: dict[str, float], current: int | None) -> int | None:
        return state["model"].assign(x, current, args.hysteresis) if state["model"] else None

    started = time.perf_counter()
    ours = run_online(events, args.customers, learn, predict, assign)
    ours["seconds"] = time.perf_counter() - started
    model = trainer.freeze(trainer.updates)
    assert model is not None
    ours["ari"] = adjusted_rand_score(truth, [model.predict(x) for x in final])
    ours["ari_gap_to_batch"] = results["sklearn_batch_kmeans_ari"] - ours["ari"]
    results["patronage_sampled_kmeans"] = ours

    # River's default KMeans (halflife 0.5) behind River's own StandardScaler.
    river_model = compose.Pipeline(
        preprocessing.StandardScaler(), cluster.KMeans(n_clusters=args.k, seed=args.seed)
    )
    started = time.perf_counter()
    baseline = run_online(
        events,
        args.customers,
        lambda _customer, x: river_model.learn_one(x),
        river_model.predict_one,
    )
    baseline["seconds"] = time.perf_counter() - started
    baseline["ari"] = adjusted_rand_score(truth, [river_model.predict_one(x) for x in final])
    results["river_default_kmeans"] = baseline

    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
