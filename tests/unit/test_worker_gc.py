"""The worker hands what start-up built to the collector's permanent
generation: full collections walked it all (70-85 ms each, with an input
batch waiting — the 1k events/s p99 while models were promoted)."""

from __future__ import annotations

import gc

from patronage.streams.worker import freeze_startup_objects


def test_objects_alive_at_startup_leave_the_collectors_generations() -> None:
    built_at_startup = {"services": [object() for _ in range(3)]}
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        walked = gc.get_objects()
        assert not any(o is built_at_startup for o in walked)
        made_later: dict[str, list[int]] = {"batch": []}
        assert any(o is made_later for o in gc.get_objects())
    finally:
        gc.unfreeze()
