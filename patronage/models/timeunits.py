"""Time units, in epoch milliseconds: the one place they are defined."""

from __future__ import annotations

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
