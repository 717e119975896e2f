"""The committed JSON Schemas are the ones the code publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patronage.models.kinds import KINDS, OTHER_CONTRACTS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("kind", sorted([*KINDS, *OTHER_CONTRACTS]))
def test_committed_schema_is_current(kind: str) -> None:
    committed = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    model = KINDS[kind].model if kind in KINDS else OTHER_CONTRACTS[kind]
    assert committed == model.model_json_schema(), (
        f"schemas/{kind}.schema.json is stale: run `make schemas`"
    )
