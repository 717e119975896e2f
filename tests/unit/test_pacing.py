"""Background passes rest in proportion to their slices."""

from __future__ import annotations

import asyncio

import pytest

from patronage.streams.pacing import Pacer, rest_after


@pytest.mark.parametrize(
    ("busy_s", "share", "rest_s"),
    [
        (0.010, 0.25, 0.030),  # a quarter of the time: rest three times as long
        (0.010, 0.5, 0.010),
        (0.002, 0.1, 0.018),
        (0.010, 1.0, 0.0),  # no limit: only yield
        (0.0, 0.25, 0.0),
        (-0.001, 0.25, 0.0),  # a clock step back is not a debt
    ],
)
def test_rest_after(busy_s: float, share: float, rest_s: float) -> None:
    assert rest_after(busy_s, share) == pytest.approx(rest_s)


def test_slices_wait_for_ingest_then_rest_after_their_own_time() -> None:
    now = [100.0]
    events: list[str] = []
    rests: list[float] = []

    async def sleep(seconds: float) -> None:
        rests.append(seconds)
        events.append("rest")

    async def wait_for_ingest() -> None:
        events.append("ingest")

    pacer = Pacer(0.2, wait_for_ingest, clock=lambda: now[0], sleep=sleep)

    async def work(took: float, result: int) -> int:
        events.append("work")
        now[0] += took
        return result

    async def run() -> list[int]:
        return [await pacer.slice(lambda t=t, r=r: work(t, r)) for t, r in [(0.01, 1), (0.05, 2)]]

    assert asyncio.run(run()) == [1, 2]
    assert events == ["ingest", "work", "rest"] * 2
    assert rests == pytest.approx([0.04, 0.2])
    assert pacer.busy_s == pytest.approx(0.06)
