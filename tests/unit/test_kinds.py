"""Every list of input topics derives from models/kinds.py."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from patronage.models.contracts import EventKind
from patronage.models.kinds import INPUT_KINDS, KINDS, OTHER_CONTRACTS
from patronage.models.simulate import generate
from patronage.streams.publishing import route
from patronage.streams.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_every_event_kind_is_registered_once() -> None:
    assert sorted(typing.get_args(EventKind)) == sorted(KINDS)
    assert len({k.default_topic for k in INPUT_KINDS}) == len(INPUT_KINDS)


def test_topic_settings_follow_the_registry() -> None:
    defaults = Settings()
    assert defaults.input_topics == {k.default_topic: k.name for k in INPUT_KINDS}
    for kind in INPUT_KINDS:
        assert Settings.model_fields[kind.topic_setting].default == kind.default_topic
    renamed = Settings(topic_prefix="shop1.", topic_store_receipts="tills")
    assert renamed.topic_for_kind["store_receipt"] == "shop1.tills"
    assert renamed.activity_topics == ["shop1.clicks", "shop1.purchases", "shop1.tills"]


def test_published_schemas_are_exactly_the_registered_kinds() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(
        f"{k}.schema.json" for k in [*KINDS, *OTHER_CONTRACTS]
    )


def test_simulated_lines_route_to_their_kinds_topics() -> None:
    settings = Settings(topic_prefix="t.")
    events, _ = generate(customers=30, days=60, seed=5, start_ms=1_767_225_600_000)
    routed = {route(settings, json.dumps(e).encode(), None)[0] for e in events}
    assert routed == {f"t.{k.default_topic}" for k in INPUT_KINDS}
    assert route(settings, b'{"type": "refund"}', None)[0] == "!unknown_type"
