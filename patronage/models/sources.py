"""Which incarnation of a topic partition a record comes from.

Profiles remember, per source, the last Kafka offset applied, so a
redelivered record changes nothing. That memory must not outlive the log it
describes: a re-created topic (or a truncated log, or a mirror failover)
restarts offsets at 0, and every new event would look like a redelivery.
A source is therefore a topic partition *and an epoch*: when the broker's log
end offset is at or below an offset we have already seen, the log was reset,
and its records from now on belong to the next epoch — a new source.

Pure: the tracker of seen offsets and epochs lives in streams/ (Redis).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceState:
    epoch: int = 0
    max_offset: int = -1  # highest offset seen in this epoch

    def encode(self) -> str:
        return f"{self.epoch}:{self.max_offset}"

    @staticmethod
    def decode(text: str) -> SourceState:
        epoch, _, offset = text.partition(":")
        return SourceState(int(epoch), int(offset))


def observe(state: SourceState, batch_max_offset: int, log_end: int | None) -> SourceState:
    """The source state after a batch whose highest offset is `batch_max_offset`,
    read while the broker's log end offset was `log_end` (None: unknown).

    The log was reset when it ends at or below an offset seen before: a
    healthy log only grows, whatever was committed or redelivered."""
    if log_end is not None and state.max_offset >= 0 and log_end <= state.max_offset:
        return SourceState(state.epoch + 1, batch_max_offset)
    return SourceState(state.epoch, max(state.max_offset, batch_max_offset))


def source_label(topic: str, partition: int, epoch: int) -> str:
    """The `src` of a delta (and the `o:<src>` offset field of a profile);
    epoch 0 keeps the plain name, so profiles written before epochs still match."""
    base = f"{topic}:{partition}"
    return base if epoch == 0 else f"{base}#e{epoch}"
