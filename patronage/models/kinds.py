"""The registry of input event kinds: every place that lists input topics
(settings, publishing, schema export, the simulator's event types, metrics
labels) derives from this table.

Adding an input kind: its contract in contracts.py, a row here, its
validation rules in validate.py (what a delta of it changes in profile.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from patronage.models.contracts import (
    Click,
    CustomerAttributes,
    EventKind,
    IdentityEvent,
    Purchase,
    StoreReceipt,
    _Event,
)


@dataclass(frozen=True)
class InputKind:
    name: EventKind  # the "type" of a published line; the schema's file name
    default_topic: str  # topic name before PATRONAGE_TOPIC_PREFIX
    model: type[_Event]  # the contract, and its JSON Schema
    activity: bool  # a visit: counts for visit days and drives the event clock

    @property
    def topic_setting(self) -> str:
        """The setting that renames its topic (PATRONAGE_TOPIC_<...>)."""
        return "topic_" + self.default_topic.replace("-", "_")


INPUT_KINDS: tuple[InputKind, ...] = (
    InputKind("click", "clicks", Click, activity=True),
    InputKind("purchase", "purchases", Purchase, activity=True),
    InputKind("store_receipt", "store-receipts", StoreReceipt, activity=True),
    InputKind("customer_attributes", "customer-attributes", CustomerAttributes, activity=False),
)
KINDS: dict[str, InputKind] = {kind.name: kind for kind in INPUT_KINDS}


# Contracts published beside the input kinds (schemas/<name>.schema.json).
OTHER_CONTRACTS: dict[str, type[BaseModel]] = {"identity": IdentityEvent}


def json_schemas() -> dict[str, dict[str, object]]:
    """The published JSON Schema of each input kind and contract (schemas/<name>.schema.json)."""
    schemas: dict[str, dict[str, object]] = {
        kind.name: kind.model.model_json_schema() for kind in INPUT_KINDS
    }
    schemas.update({name: model.model_json_schema() for name, model in OTHER_CONTRACTS.items()})
    return schemas
