"""When the benchmark samples the lag while a backlog drains."""

from __future__ import annotations

import pytest

from benchmarks.bench import DRAIN_END_POLL_S, DRAIN_POLL_S, drain_poll_s


@pytest.mark.parametrize(
    ("left", "first", "wait"),
    [
        (138_390, 138_390, DRAIN_POLL_S),  # the whole backlog left
        (40_000, 138_390, DRAIN_POLL_S),
        (34_597, 138_390, DRAIN_END_POLL_S),  # a quarter left
        (1, 138_390, DRAIN_END_POLL_S),
        (0, 0, DRAIN_END_POLL_S),  # (drained before the first sample)
    ],
)
def test_the_lag_is_sampled_often_only_near_the_end(left: int, first: int, wait: float) -> None:
    assert drain_poll_s(left, first) == wait
