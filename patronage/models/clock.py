"""The event clock of a partition: how far event time has surely progressed.

All input topics are co-partitioned by customer, but they drain at their own
speed (a catch-up after downtime, a till that uploads hourly). As Kafka
Streams advances a task's stream time as the minimum over its inputs, the
clock of partition p is the minimum, over the input topics, of the newest
event time seen on that topic's partition p — so no topic's slower events
can still be "in the past" of the clock. A topic that has delivered nothing
for `idle_ms` (wall time) stops holding the clock back, as Kafka Streams
waits at most `max.task.idle.ms` for an empty input; when every input is
idle the clock is the newest event time seen. The lateness setting is then
subtracted by the caller, for disorder within one topic.

Per partition, what the workers record (a Redis hash, see streams/store.py):
`hw:<topic>` newest event time seen, `seen:<topic>` wall time of its last
record, `since` wall time the partition first delivered anything. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def event_clock(
    marks: Mapping[str, str | float],
    topics: Sequence[str],
    now_wall_ms: float,
    idle_ms: float,
) -> float | None:
    """The partition's event clock (epoch ms), or None before any event."""
    newest = [float(marks[f"hw:{t}"]) for t in topics if f"hw:{t}" in marks]
    if not newest:
        return None
    since = float(marks.get("since", now_wall_ms))
    holding: list[float] = []
    for topic in topics:
        seen = marks.get(f"seen:{topic}")
        # A topic is waited for while it delivered something recently, or,
        # never having delivered, while the partition itself is young.
        last_heard = float(seen) if seen is not None else since
        if now_wall_ms - last_heard < idle_ms:
            holding.append(float(marks.get(f"hw:{topic}", 0.0)))
    return min(holding) if holding else max(newest)


def with_batch(
    marks: Mapping[str, str | float],
    batch_newest: Mapping[str, int],
    now_wall_ms: float,
) -> dict[str, str | float]:
    """The marks as they are once this batch (topic -> newest event time in
    it) is recorded: what the watermark script writes, for computing the
    clock of the batch itself without a second round trip."""
    out: dict[str, str | float] = dict(marks)
    out.setdefault("since", now_wall_ms)
    for topic, newest in batch_newest.items():
        current = float(out.get(f"hw:{topic}", newest))
        out[f"hw:{topic}"] = max(current, float(newest))
        out[f"seen:{topic}"] = now_wall_ms
    return out
