"""The committed JSON Schemas are the ones the code publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patronage.models.kinds import KINDS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_committed_schema_is_current(kind: str) -> None:
    committed = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    assert committed == KINDS[kind].model.model_json_schema(), (
        f"schemas/{kind}.schema.json is stale: run `make schemas`"
    )
