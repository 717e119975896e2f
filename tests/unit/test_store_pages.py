"""store._pages: the one pager behind export, migration and prefix deletion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from patronage.streams.store import _pages


async def _items(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize(
    ("count", "size", "pages"),
    [
        (0, 3, []),
        (2, 3, [[0, 1]]),
        (3, 3, [[0, 1, 2]]),
        (7, 3, [[0, 1, 2], [3, 4, 5], [6]]),
        (2, 1, [[0], [1]]),
    ],
)
def test_pages(count: int, size: int, pages: list[list[int]]) -> None:
    async def collect() -> list[list[int]]:
        return [page async for page in _pages(_items(count), size)]

    assert asyncio.run(collect()) == pages
