"""When the learner promotes a model version: after the warm-up, at most once
per interval, and only when a centre moved materially."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from patronage.models.features import FEATURES
from patronage.streams.memory import MemoryModelStore
from patronage.streams.segmenting import Learner
from patronage.streams.settings import Settings


def vectors(n: int, offset: float, seed: int, prefix: str = "c") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    centres = [[rng.uniform(-2, 2) for _ in FEATURES] for _ in range(3)]
    out = []
    for i in range(n):
        centre = centres[i % 3]
        x = {k: c + offset + rng.gauss(0, 0.3) for k, c in zip(FEATURES, centre, strict=True)}
        x["tenure_log_days"] = 5.0  # ~150 active days: past the warm-up
        out.append({"id": f"{prefix}{i}", "x": x, "cat": "grocery", "rfm": [3.0, 1.0, 40.0]})
    return out


def test_promotions_follow_the_policy() -> None:
    settings = Settings(
        segments=3,
        segment_warmup=100,
        segment_promote_interval_s=300,
        segment_promote_min_shift=0.2,
    )
    now = [1000.0]
    learner = Learner(settings, MemoryModelStore(), clock=lambda: now[0])

    async def steps() -> list[int | None]:
        seen = []
        for batch, advance in (
            (vectors(60, 0.0, 1), 0),  # below the warm-up: no model
            (vectors(100, 0.0, 1), 0),  # warm-up reached: the first version at once
            (vectors(100, 3.0, 1, "d"), 10),  # moved a lot, but within the interval
            (vectors(5, 0.0, 2, "e"), 400),  # interval passed, but (the move is) ...
        ):
            now[0] += advance
            model = await learner.learn(batch)
            seen.append(model.version if model else None)
        return seen

    seen = asyncio.run(steps())
    # ... the large move of step 3 is promoted at step 4, once the interval passed.
    assert seen == [None, 1, None, 2]
    assert learner.promoted == 2 and learner.promotions_last_hour() == 2

    async def unchanged() -> Any:
        now[0] += 400
        return await learner.learn(vectors(3, 3.0, 1, "d"))  # the same customers again

    assert asyncio.run(unchanged()) is None
    assert learner.skipped["small_shift"] == 1
    now[0] += 3600
    assert learner.promotions_last_hour() == 0
