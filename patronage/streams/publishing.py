"""Publishing JSON-lines files of events to their input topics (routed by
each line's "type", see models/kinds.py), optionally paced for replays."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from patronage.models.contracts import routing_key
from patronage.models.kinds import KINDS
from patronage.models.timeunits import DAY_MS
from patronage.streams.settings import Settings


async def publish_file(
    settings: Settings,
    path: Path,
    topic: str | None = None,
    pace_days: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    rate: float | None = None,
) -> Counter[str]:
    """Send every line of a JSON-lines file; returns lines per topic ("!why"
    for lines skipped). `pace_days`: wait for the consumer group after each
    so many days of event time; `rate`: at most so many events per second."""
    from aiokafka import AIOKafkaProducer

    counts: Counter[str] = Counter()
    pacer = _Pacer(settings, pace_days, rate)
    producer = AIOKafkaProducer(
        **settings.kafka_client_kwargs(), acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        pending: list[Any] = []
        with path.open("rb") as handle:
            for line in (raw.rstrip(b"\r\n") for raw in handle):
                if not line.strip():
                    continue
                target, key = route(settings, line, topic)
                counts[target] += 1
                if target.startswith("!"):
                    continue
                if pacer.must_wait(line) or len(pending) >= 5000:
                    await _acked(pending, on_sent)
                    await pacer.wait()
                pending.append(await producer.send(target, line, key=key))
                await pacer.hold(sum(n for t, n in counts.items() if not t.startswith("!")))
        await _acked(pending, on_sent)
    finally:
        await producer.stop()
    return counts


async def _acked(pending: list[Any], on_sent: Callable[[int], None] | None) -> None:
    await asyncio.gather(*pending)
    if on_sent is not None:
        on_sent(len(pending))
    pending.clear()


class _Pacer:
    """Replays wait for the workers every `pace_days` of event time; a
    simulation offers at most `rate` events per second."""

    def __init__(self, settings: Settings, pace_days: float | None, rate: float | None) -> None:
        self.settings = settings
        self.pace_ms = int(pace_days * DAY_MS) if pace_days else None
        self.rate = rate
        self.chunk_end: int | None = None
        self.waiting = False
        self.started = time.monotonic()

    def must_wait(self, line: bytes) -> bool:
        """Whether this line starts a new chunk of event time."""
        from patronage.models.contracts import parse_ts

        ts = line_ts(line, parse_ts) if self.pace_ms else None
        if ts is None or self.pace_ms is None:
            return False
        if self.chunk_end is None:
            self.chunk_end = ts + self.pace_ms
            return False
        if ts < self.chunk_end:
            return False
        while ts >= self.chunk_end:
            self.chunk_end += self.pace_ms
        self.waiting = True
        return True

    async def wait(self) -> None:
        if self.waiting:
            from patronage.streams.lag import wait_caught_up

            await wait_caught_up(self.settings)
            self.waiting = False

    async def hold(self, sent: int) -> None:
        if self.rate:
            ahead = sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


def line_ts(line: bytes, parse_ts: Any) -> int | None:
    try:
        doc = json.loads(line)
        return int(parse_ts(doc["ts"]))
    except (ValueError, KeyError, TypeError):
        return None


def route(settings: Settings, line: bytes, topic: str | None) -> tuple[str, bytes | None]:
    try:
        doc: Any = json.loads(line)
    except ValueError:
        doc = None
    routing = routing_key(doc) if isinstance(doc, dict) else None
    key = routing.encode("utf-8") if routing is not None else None
    if topic is not None:
        return topic, key
    if not isinstance(doc, dict):
        return "!not_json", None
    if doc.get("type") in ("link", "unlink"):
        return settings.topic(settings.topic_identities), key
    kind = KINDS.get(str(doc.get("type")))
    if kind is None:
        return "!unknown_type", None
    return settings.topic_for_kind[kind.name], key


def simulate(
    settings: Callable[[], Settings],
    customers: int,
    days: int,
    seed: int,
    start: str | None,
    out: Path | None,
    rate: float,
    bad_rate: float,
    personas_out: Path | None,
    identities: bool = True,
) -> str:
    """Generate a simulated history; write it to `out` or publish it (then
    settings are needed). Returns what was done."""
    from patronage.models.simulate import simulated_stream, to_jsonl, with_bad_events

    clean, personas = simulated_stream(
        customers, days, seed, history_start(days, start), identities
    )
    events = with_bad_events(clean, bad_rate, seed)
    if personas_out:
        personas_out.write_text(json.dumps(personas, indent=1, sort_keys=True) + "\n")
    if out:
        out.write_text(to_jsonl(events))
        return f"wrote {len(events)} events for {customers} customers to {out}"
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.write(to_jsonl(events))
    try:
        sent = asyncio.run(publish_file(settings(), Path(handle.name), rate=rate or None))
    finally:
        Path(handle.name).unlink()
    return f"published {sum(sent.values())} events for {customers} customers"


def replay_file(
    settings: Settings,
    path: Path,
    mapping_spec: str,
    fmt: str | None,
    currency: str | None,
    pace_days: float | None,
    dry_run: bool,
) -> Iterator[str]:
    """Convert an order history and publish it in time order; yields the report."""
    from patronage.models.replay import convert, parse_mapping

    try:
        mapping = parse_mapping(mapping_spec)
    except ValueError as exc:
        raise SystemExit(f"patronage events replay: --map: {exc}") from None
    rows = read_rows(path, fmt or path.suffix.lstrip(".").lower())
    base = currency or next(iter(settings.currencies))
    converted = convert(rows, mapping, settings.rules, int(time.time() * 1000), base)
    sent = 0
    if converted.events and not dry_run:
        sent = _publish_with_progress(settings, converted.events, pace_days)
    yield f"rows read: {converted.rows}"
    yield f"events {'converted' if dry_run else 'sent'}: {sent or len(converted.events)}"
    yield f"rows rejected: {sum(converted.rejected.values())}"
    for code, count in converted.rejected.most_common():
        yield f"  {count:>8}  {code}  (e.g. {converted.examples[code]})"
    yield f"lines dropped from kept receipts: {sum(converted.lines_dropped.values())}"
    for code, count in converted.lines_dropped.most_common():
        yield f"  {count:>8}  {code}  (e.g. {converted.examples[code]})"
    yield f"corrections: {sum(converted.corrected.values())}"
    for code, count in converted.corrected.most_common():
        yield f"  {count:>8}  {code}"


def _publish_with_progress(
    settings: Settings, events: list[dict[str, Any]], pace_days: float | None
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")
    path = Path(handle.name)
    try:
        columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        console = Console(stderr=True)
        with Progress("[progress.description]{task.description}", *columns, console=console) as bar:
            task = bar.add_task("replaying", total=len(events))
            counts = asyncio.run(
                publish_file(
                    settings, path, None, pace_days, on_sent=lambda n: bar.update(task, advance=n)
                )
            )
        return sum(n for t, n in counts.items() if not t.startswith("!"))
    finally:
        path.unlink()


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    import csv

    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit(
                "patronage events replay: reading Parquet needs pyarrow: "
                "pip install 'patronage[parquet]'"
            ) from None
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    raise SystemExit(f"patronage events replay: unknown format {fmt!r}; use csv or parquet")


def history_start(days: int, start: str | None) -> int:
    """Start of a simulated history: given, or whole days back from now (so
    "now" sits at the end of the history)."""
    from patronage.models.contracts import parse_ts

    if start:
        return parse_ts(start)
    return (int(time.time() * 1000) // DAY_MS - days) * DAY_MS
