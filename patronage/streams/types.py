"""Interfaces between the pipeline and its I/O (a leaf module, like faust/types/).

The pipeline (streams/pipeline.py) talks only to these: Redis implements the
stores in streams/store.py and streams/segmenting.py, memory in
streams/memory.py; Faust's producer and consumer implement `Producer` and
`InputLog` in streams/worker.py, a list and a dict in tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from patronage.models.identity import Person
from patronage.models.predict import FittedParameters
from patronage.models.profile import Delta, PackedDeltas, ProfileState
from patronage.models.segments import FrozenModel, SegmentTrainer
from patronage.models.sources import SourceState

Fields = dict[str, float | str]
# The partition-sharded schedules: lapse judgements, at-risk moments.
Queue = Literal["lapse", "risk"]
# A due entry to move if nobody moved it since: (customer, the score it was
# given, the new one; None: nothing left to judge).
DueMove = tuple[str, float, float | None]


@dataclass(frozen=True)
class PersonActivity:
    """What outputs of a linked part need of its person (streams/identities.py)."""

    canonical: str
    days: list[int]  # the person's visit days, sorted
    last_order_at: float  # the person's newest order (ms; -inf: none)


# parts -> the activity of their people, for the linked ones
People = Callable[[Sequence[str]], Awaitable[dict[str, PersonActivity]]]


@dataclass
class ApplyResult:
    applied: int = 0
    duplicate_offsets: int = 0
    duplicate_events: int = 0
    # customer -> pending lapse findings (raw outbox items, JSON)
    outbox: dict[str, list[bytes]] = field(default_factory=dict)
    # customer -> profile fields after the update (for scoring)
    profiles: dict[str, Fields] = field(default_factory=dict)
    # customer -> why the store refused its update (its records go to the DLQ)
    failed: dict[str, str] = field(default_factory=dict)
    # partition -> the lapse entries this apply gave an early bound, each
    # with when the apply's own judging says to judge again: moved there
    # once the batch's alerts are out (`store_scores`), the sweep does not
    # judge every customer of every batch a second time.
    lapse_due: dict[int, list[DueMove]] = field(default_factory=dict)


class ProfileStoreT(Protocol):
    """Profiles, their lapse schedule, event-clock marks and sources."""

    async def ensure_scripts(self, force: bool = False) -> None: ...

    async def apply_batch(
        self,
        by_customer: Mapping[str, Sequence[Delta] | PackedDeltas],
        partition_of: dict[str, int] | None = None,
        clocks: Mapping[int, float] | None = None,
        marks: Mapping[int, Mapping[str, int]] | None = None,
        sources: Mapping[tuple[str, int], SourceState] | None = None,
        wall_ms: int = 0,
    ) -> ApplyResult: ...

    async def source_codes(self, labels: Iterable[str]) -> dict[str, str] | None:
        """Each source label as the store's apply takes it (for a batch
        packed where it is prepared), or None where deltas are not packed."""
        ...

    async def judge(
        self, customers: Mapping[str, float]
    ) -> dict[str, tuple[list[bytes], float | None]]: ...

    async def clock_marks(self, partitions: Sequence[int]) -> dict[int, dict[str, str]]: ...

    async def source_states(
        self, sources: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], SourceState]: ...

    async def erase(self, customer_id: str, partition: int) -> tuple[int, int | None]: ...

    async def store_scores(
        self,
        writes: Mapping[str, Mapping[str, str | int]],
        risk_due: Mapping[int, Mapping[str, float]] | None = None,
        lapse_due: Mapping[int, Sequence[DueMove]] | None = None,
    ) -> set[str]:
        """Write scoring decisions to the profiles that still exist,
        schedule at-risk judging (`risk_due`, as schedule_risk) and move
        lapse entries (`lapse_due`, as reschedule), in one round trip;
        returns the customers written."""
        ...

    async def ack_outbox(self, items: dict[str, list[bytes]]) -> None: ...

    async def clear_scores(self, customer_ids: Sequence[str]) -> dict[str, int | None]:
        """Drop these profiles' scoring fields; customer -> the segment it had."""
        ...

    async def due_customers(
        self, partition: int, now_ms: float, limit: int, queue: Queue = "lapse"
    ) -> list[tuple[str, float]]:
        """Customers due by `now_ms` in a partition's lapse or at-risk queue."""
        ...

    async def reschedule(
        self,
        partition: int,
        moves: Sequence[DueMove],
        queue: Queue = "lapse",
    ) -> None:
        """Move (or drop: None) swept entries nobody rescheduled since."""
        ...

    async def schedule_risk(
        self, moments: Mapping[int, Mapping[str, float]], keep_earlier: bool = False
    ) -> None:
        """partition -> customer -> when to judge their at-risk episodes; with
        `keep_earlier` an earlier time already scheduled stays."""
        ...

    async def record_risk(self, judged: Mapping[str, tuple[float | None, float | None]]) -> None:
        """customer -> (orders judged up to, episode alerted): see models/risk.py."""
        ...

    async def risk_inputs(self, customer_ids: Sequence[str]) -> dict[str, tuple[Fields, str]]:
        """customer -> (profile fields, unjudged orders) of those that exist."""
        ...

    async def risk_versions(self, partitions: Sequence[int]) -> dict[int, int]:
        """The parameters version each partition was last judged with (0: never)."""
        ...

    async def set_risk_version(self, partition: int, version: int) -> None: ...

    async def profile(self, customer_id: str) -> dict[str, object] | None: ...

    def customer_ids(self, count: int = 1000) -> AsyncIterator[str]: ...

    async def partition_members(
        self, partition: int, cursor: int, count: int
    ) -> tuple[int, list[str]]:
        """A slice of a partition's customers: (next cursor, 0 when done; ids)."""
        ...

    async def forget_members(self, partition: int, customer_ids: Sequence[str]) -> None:
        """Drop customers whose profile is gone from their partition's list
        (and any lapse judgment still scheduled for them)."""
        ...

    async def fields_of(self, customer_ids: Sequence[str]) -> dict[str, Fields]: ...

    async def states_of(self, customer_ids: Sequence[str]) -> dict[str, ProfileState]:
        """Everything stored of these profiles (the parts of a person, to merge)."""
        ...

    # Identity stitching (models/identity.py): nodes are customer ids and
    # identifiers keyed "<kind>:<value>".

    async def identity_links(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        """node -> {other node: the pair's latest link or unlink, JSON}."""
        ...

    async def persons_of(self, nodes: Sequence[str]) -> dict[str, Person]:
        """node -> its person, for the linked ones."""
        ...

    async def identity_state(self, nodes: Sequence[str]) -> tuple[int, dict[str, Person]]:
        """The identity generation (it moves on whenever any person changes;
        caches of persons check it) and `persons_of(nodes)`, the people read
        no earlier than the generation (one round trip where Redis can do that)."""
        ...

    async def write_identities(
        self, links: Mapping[tuple[str, str], str], persons: Mapping[str, Person | None]
    ) -> None:
        """Each (customer, identifier) pair's latest event, and each node's
        person (None: linked to nobody)."""
        ...

    async def forget_identities(self, nodes: Sequence[str]) -> int:
        """Erasure: drop the nodes' links (both sides) and persons."""
        ...


class ModelStoreT(Protocol):
    """Promoted segment models, the learner's checkpoint and segment sizes."""

    async def current_version(self) -> int: ...

    async def load(self, version: int) -> FrozenModel | None: ...

    async def promote(self, model: FrozenModel, checkpoint: str) -> None:
        """Store `model` as the newest version and the learner's JSON
        checkpoint (text: it is serialised off the event loop)."""

    async def save_trainer(self, checkpoint: str) -> None:
        """Replace the learner's checkpoint (an erased customer left it)."""

    async def load_trainer(self) -> SegmentTrainer | None: ...

    async def sizes(self) -> dict[int, int]: ...

    async def load_parameters(self) -> FittedParameters | None: ...

    async def save_parameters(self, fitted: FittedParameters) -> None: ...

    async def adjust_sizes(self, changes: Mapping[int, int]) -> None:
        """Add to the customer count of each segment."""
        ...

    async def record_pass(self, partition: int, version: int, partitions: int) -> None:
        """A re-scoring pass judged every customer of `partition` (of
        `partitions`) with model `version`."""

    async def judged_floor(self) -> int:
        """models.segments.judged_floor_of the passes recorded."""
        ...


class Producer(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        """Queue a record; the returned awaitable resolves when the broker acked it."""
        ...


class InputLog(Protocol):
    """What the pipeline needs to know of the input topics' partitions."""

    def assignment(self) -> frozenset[tuple[str, int]]: ...

    def highwater(self, topic: str, partition: int) -> int | None: ...
