"""The model stores' record of re-scoring passes, on the in-memory reference
and on real Redis: profiles are no longer rewritten to record a newer model,
so this record is what every shown `segment_model_version` rests on."""

from __future__ import annotations

from typing import Any

from patronage.streams.types import ModelStoreT
from tests.contract.conftest import run


def test_the_judged_floor_follows_every_partitions_passes(models_of: Any) -> None:
    async def check(models: ModelStoreT) -> list[int]:
        seen = [await models.judged_floor()]
        for partition in range(3):
            await models.record_pass(partition, 4, 4)
        seen.append(await models.judged_floor())  # partition 3 not judged yet
        await models.record_pass(3, 4, 4)
        seen.append(await models.judged_floor())
        await models.record_pass(1, 5, 4)  # a newer pass under way
        seen.append(await models.judged_floor())
        # A worker still on version 3 that took partition 2 over: the record
        # falls back rather than claim more than was judged.
        await models.record_pass(2, 3, 4)
        seen.append(await models.judged_floor())
        return seen

    assert run(check, models_of) == [0, 0, 4, 4, 3]
