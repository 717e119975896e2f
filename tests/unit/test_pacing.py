"""Background passes rest in proportion to their slices."""

from __future__ import annotations

import asyncio

import pytest

from patronage.streams.pacing import Pacer, pass_share, rest_after


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


@pytest.mark.parametrize(
    ("share", "ingest_busy", "expected"),
    [
        (0.25, 0.0, 0.25),  # an idle worker: the pass's own share
        (0.25, 0.5, 0.25),  # ingest and its headroom fit beside it
        (0.25, 0.6, 0.15),  # ingest needs more: the pass takes less
        (0.25, 0.7, 0.05),
        (0.25, 0.9, 0.02),  # saturated: the floor, so the pass still moves
        (0.25, 1.5, 0.02),  # (overlapping batches counted twice)
        (0.01, 0.9, 0.01),  # a share below the floor stays as set
        (1.0, 0.9, 1.0),  # 1: no rests, as the setting says
    ],
)
def test_pass_share(share: float, ingest_busy: float, expected: float) -> None:
    assert pass_share(share, ingest_busy) == pytest.approx(expected)


def test_slices_rest_longer_while_ingest_is_busy() -> None:
    """The load is ingest's busy time over the time since the slice before:
    idle, then 70 % busy, then idle again."""
    now = [0.0]
    ingest = [0.0]
    rests: list[float] = []

    async def sleep(seconds: float) -> None:
        rests.append(seconds)
        now[0] += seconds

    pacer = Pacer(0.25, clock=lambda: now[0], sleep=sleep, ingest_busy=lambda: ingest[0])

    async def work(ingest_share: float) -> None:
        now[0] += 0.01
        ingest[0] += 0.01 * ingest_share

    async def run() -> None:
        for load in (0.0, 0.7, 0.7, 0.0):
            # the load over the slice and the rest before it
            await pacer.slice(lambda load=load: work(load))
            ingest[0] += rests[-1] * load

    asyncio.run(run())
    assert pacer.shares[0] == pytest.approx(0.25)
    # an idle rest and a busy slice: 17.5 % busy, the full share
    assert pacer.shares[1] == pytest.approx(0.25)
    # a busy rest and a busy slice: 70 % busy
    assert pacer.shares[2] == pytest.approx(0.05)
    assert rests[2] == pytest.approx(rest_after(0.01, 0.05))  # 0.19 s, against 0.03
    # the busy rest, then an idle slice: 66.5 % busy, the pass speeds up again
    assert pacer.shares[3] == pytest.approx(0.085)
