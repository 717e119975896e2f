"""What a worker does when a store call fails (the policy is streams/errors.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import redis.exceptions

from patronage.streams.errors import FatalRedisError, classify, fatal_message

log = logging.getLogger("patronage.worker")
T = TypeVar("T")


def stop_the_worker(agent: str, why: str = "") -> NoReturn:
    """An agent failed in a way it cannot recover from. A worker whose agent
    died would stay up consuming nothing; exiting lets the supervisor start a
    fresh one, and Kafka redelivers everything not yet committed."""
    if why:
        log.critical("%s failed: %s; stopping the worker", agent, why)
    else:
        log.critical("agent %s failed; stopping the worker", agent, exc_info=True)
    logging.shutdown()
    os._exit(70)


class Retry:
    """Runs idempotent store calls until they succeed, and timer work once."""

    def __init__(
        self,
        max_delay_s: float,
        counters: Counter[str],
        reload_scripts: Callable[[bool], Awaitable[None]] | None = None,
        stop: Callable[[str, str], NoReturn] = stop_the_worker,
    ) -> None:
        self.max_delay_s = max_delay_s
        self.counters = counters
        self.reload_scripts = reload_scripts
        self.stop = stop
        # False only while a call is being retried (readiness reports it).
        self.ok = True

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Transient errors back off (nothing committed, never dropped);
        fatal ones raise FatalRedisError naming the setting; anything else is
        raised to the caller."""
        delay = 0.1
        while True:
            try:
                result = await call()
            except Exception as exc:
                kind = classify(exc)
                if kind == "fatal":
                    raise FatalRedisError(fatal_message(exc)) from exc
                if kind == "poison":
                    raise
                self.ok = False
                self.counters["redis_retries"] += 1
                log.warning("redis unavailable (%s); retrying %s in %.1fs", exc, what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                if isinstance(exc, redis.exceptions.NoScriptError) and self.reload_scripts:
                    # A (cluster) node restarted and forgot our scripts.
                    await self.guarded("script load", self.reload_scripts, True)
                continue
            if not self.ok:
                log.warning("redis is back; resuming")
            self.ok = True
            return result

    async def guarded(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """One run of a timer's work: a transient error skips this run (the
        next tick tries again), a fatal one stops the worker."""
        try:
            await call(*args)
        except Exception as exc:
            kind = classify(exc)
            if kind == "fatal":
                self.stop(what, fatal_message(exc))
            if kind == "transient":
                log.warning("%s skipped: redis unavailable (%s)", what, exc)
            else:
                log.error("%s failed; trying again on the next run", what, exc_info=True)
