"""What valuing a batch of buyers costs: `clv_many` (365-day CLV, monthly
steps) for batches of 1 to 1,000 customers.

    python -m benchmarks.bench_clv

Ingest values every buyer of a batch in one call, so at a few thousand
events per second (batches of ~100 events, 50 a second) the call's fixed
cost counts as much as its cost per customer; `GET /profiles/<id>` values
one customer per call. Printed: the best of 50 calls per size.
"""

from __future__ import annotations

import json
import time

import numpy as np

from patronage.models.predict import BGNBD, GammaGamma, clv_many

# Fader, Hardie & Lee's CDNOW parameters.
PURCHASES = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
SPEND = GammaGamma(p=6.25, q=3.74, gamma=15.44)


def main() -> None:
    rng = np.random.default_rng(1)
    for size in (1, 10, 100, 1000):
        x = rng.integers(0, 10, size).astype(float)
        age = rng.uniform(1, 50, size)
        t_x = age * rng.uniform(0, 1, size)
        zbar = rng.uniform(10, 100, size)
        best = float("inf")
        for _ in range(50):
            started = time.perf_counter()
            clv_many(PURCHASES, SPEND, x, t_x, age, zbar, 365 / 7, 0.1)
            best = min(best, time.perf_counter() - started)
        print(
            json.dumps(
                {
                    "customers": size,
                    "us_per_call": round(best * 1e6, 1),
                    "us_per_customer": round(best * 1e6 / size, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
