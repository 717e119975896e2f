"""Comparing profile views: floats within rounding, everything else exactly.

A profile is order-free in meaning, but float sums taken in another order
differ in the last bits; every tier compares views through this one rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def assert_views_close(actual: Mapping[str, object], expected: Mapping[str, object]) -> None:
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, float) and isinstance(got, float):
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (key, got, want)
        elif isinstance(want, dict):
            assert isinstance(got, dict), (key, got)
            assert_views_close(got, want)
        else:
            assert got == want, (key, got, want)
