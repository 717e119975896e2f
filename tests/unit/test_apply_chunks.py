"""store.apply_chunks: how a batch's customers are split for the apply —
one round trip for a live batch, few connections for any catch-up."""

from __future__ import annotations

import pytest

from patronage.streams.store import APPLY_CHUNK_CUSTOMERS, APPLY_CHUNKS_MAX, apply_chunks


@pytest.mark.parametrize(
    ("customers", "sizes"),
    [
        (0, []),
        (1, [1]),
        (APPLY_CHUNK_CUSTOMERS, [APPLY_CHUNK_CUSTOMERS]),  # a live batch: one
        (APPLY_CHUNK_CUSTOMERS + 1, [APPLY_CHUNK_CUSTOMERS, 1]),
        (1_137, [500, 500, 137]),
        (APPLY_CHUNK_CUSTOMERS * APPLY_CHUNKS_MAX, [APPLY_CHUNK_CUSTOMERS] * APPLY_CHUNKS_MAX),
        (15_000, [1_875] * 8),  # many customers: larger chunks, never more of them
        (15_001, [1_876] * 7 + [1_869]),
    ],
)
def test_apply_chunks(customers: int, sizes: list[int]) -> None:
    ids = [f"c{i}" for i in range(customers)]
    chunks = apply_chunks(ids)
    assert [len(chunk) for chunk in chunks] == sizes
    assert [c for chunk in chunks for c in chunk] == ids  # all of them, in order
