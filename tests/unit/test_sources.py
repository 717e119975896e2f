"""Offset resets detected from the broker's log end offset, as a table."""

from __future__ import annotations

import pytest

from patronage.models.sources import SourceState, observe, source_label

CASES = [
    # (before, batch max offset, log end offset, after)
    (SourceState(), 41, 42, SourceState(0, 41)),  # first sight
    (SourceState(0, 41), 99, 100, SourceState(0, 99)),  # the log grows
    (SourceState(0, 99), 60, 100, SourceState(0, 99)),  # a redelivery after a crash
    (SourceState(0, 99), 99, None, SourceState(0, 99)),  # log end unknown yet
    (SourceState(0, 5000), 49, 50, SourceState(1, 49)),  # topic re-created: offsets from 0
    (SourceState(0, 5000), 4990, 4995, SourceState(1, 4990)),  # log truncated below us
    (SourceState(1, 49), 60, 61, SourceState(1, 60)),  # the new incarnation grows
    (SourceState(0, 99), 99, 100, SourceState(0, 99)),  # the same batch again
]


@pytest.mark.parametrize(("before", "batch_max", "log_end", "after"), CASES)
def test_observe(
    before: SourceState, batch_max: int, log_end: int | None, after: SourceState
) -> None:
    assert observe(before, batch_max, log_end) == after
    assert SourceState.decode(after.encode()) == after


def test_labels_keep_epoch_zero_plain() -> None:
    assert source_label("clicks", 3, 0) == "clicks:3"
    assert source_label("clicks", 3, 2) == "clicks:3#e2"
