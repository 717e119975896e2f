"""What ops watch that the pipeline does not compute: consumer lag,
segment sizes, readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from patronage.streams.lag import LagReader, PartitionLag
from patronage.streams.pipeline import Pipeline
from patronage.streams.settings import Settings
from patronage.streams.store import ping_every_master

log = logging.getLogger("patronage.worker")


class Monitor:
    """What ops watch that the pipeline does not compute: lag, segment sizes, readiness."""

    def __init__(self, settings: Settings, pipeline: Pipeline, redis: Any) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.redis = redis
        self.lag_reader = LagReader(settings)
        self.lag_rows: list[PartitionLag] = []
        self.kafka_ok_at = 0.0
        self.segment_sizes: dict[int, int] = {}

    async def sample(self) -> None:
        try:
            self.lag_rows = await self.lag_reader.sample(waiting=True)
            self.kafka_ok_at = time.monotonic()
        except Exception as exc:  # any Kafka failure means "not ready", never a crash
            log.warning("lag sample failed: %s", exc)
        await self.pipeline.retry.guarded("segment sizes", self._refresh_sizes)

    async def _refresh_sizes(self) -> None:
        self.segment_sizes = await self.pipeline.segmenter.models.sizes()

    async def readiness(self, owned: set[int]) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(ping_every_master(self.redis, self.settings.redis_cluster), 1.0)
            # retry.ok is False only while a batch is stuck retrying.
            ok = self.pipeline.retry.ok
            checks["redis"] = "ok" if ok else "unavailable: a batch is being retried"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
        fresh = time.monotonic() - self.kafka_ok_at < 3 * self.settings.lag_interval_s + 5
        checks["kafka"] = "ok" if fresh else "no successful broker round trip recently"
        checks["partitions"] = f"{len(owned)} assigned" if owned else "none assigned yet"
        if checks["redis"] == "ok":
            segmenter = self.pipeline.segmenter
            promoted = await segmenter.models.current_version()
            loaded = segmenter.model.version if segmenter.model else 0
            if promoted and not loaded:
                checks["model"] = f"version {promoted} promoted but not loaded"
            else:
                checks["model"] = f"version {loaded}" if loaded else "none promoted yet"
        ready = (
            checks["redis"] == "ok"
            and checks["kafka"] == "ok"
            and bool(owned)
            and "not loaded" not in checks.get("model", "")
        )
        return ready, checks
