"""`patronage` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from patronage.models.timeunits import DAY_MS
from patronage.streams.settings import Settings, load_settings

KIND_BY_TYPE = {
    "click": "click",
    "purchase": "purchase",
    "store_receipt": "store_receipt",
    "customer_attributes": "customer_attributes",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="patronage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run the stream worker (Faust)")

    schema = sub.add_parser("schema", help="print the JSON Schemas of the event contracts")
    schema.add_argument("--out", type=Path, help="write one <type>.schema.json per contract here")

    topics = sub.add_parser("topics", help="manage Kafka topics")
    topics.add_argument("action", choices=["create"])

    publish = sub.add_parser("publish", help="send a JSON-lines file of events to Kafka")
    publish.add_argument("file", type=Path)
    publish.add_argument("--topic", help="send every line raw to this topic instead of by 'type'")
    publish.add_argument(
        "--pace-days",
        type=float,
        help="after each N days of event time, wait until the consumer group caught up "
        "(for replays of history in time order, with PATRONAGE_LAPSE_CLOCK=event)",
    )

    simulate = sub.add_parser("simulate", help="generate a shop/till event stream")
    simulate.add_argument("--customers", type=int, default=200)
    simulate.add_argument("--days", type=int, default=90, help="days of history")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument(
        "--start", help="start of history (RFC 3339; default: DAYS days before now)"
    )
    simulate.add_argument("--out", type=Path, help="write JSON lines here instead of publishing")
    simulate.add_argument(
        "--rate",
        type=float,
        default=0,
        help="events per second when publishing (0: as fast as possible)",
    )
    simulate.add_argument(
        "--bad-rate",
        type=float,
        default=0.0,
        help="share of extra bad events (0..1), for DLQ demos",
    )
    simulate.add_argument(
        "--personas-out", type=Path, help="also write customer_id -> hidden persona (JSON)"
    )

    reset = sub.add_parser("reset", help="delete every Redis key under PATRONAGE_KEY_PREFIX")
    reset.add_argument("--yes", action="store_true", help="really delete")

    alerts = sub.add_parser("alerts", help="lapse alerts and segment changes")
    alerts_sub = alerts.add_subparsers(dest="action", required=True)
    tail = alerts_sub.add_parser("tail", help="print alerts as they arrive")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--limit", type=int, help="stop after this many")
    tail.add_argument("--timeout", type=float, help="stop after this many idle seconds")
    tail.add_argument("--only", choices=["lapse", "segments"], help="one kind of alert")
    tail.add_argument(
        "--since", help="only alerts published at or after this time (RFC 3339 or epoch ms)"
    )

    segments = sub.add_parser("segments", help="segments of the promoted model")
    segments.add_argument("action", choices=["show"])
    segments.add_argument("--json", action="store_true")

    replay = sub.add_parser("replay", help="backfill order history (CSV or Parquet) in time order")
    replay.add_argument("file", type=Path)
    replay.add_argument(
        "--map",
        required=True,
        help="column mapping, e.g. customer_id=cust,ts=date,amount=total,order_id=order,"
        "sku=sku,category=cat,quantity=qty,unit_price=price,store=store,channel=channel",
    )
    replay.add_argument("--format", choices=["csv", "parquet"], help="default: by file suffix")
    replay.add_argument("--currency", default=None, help="when no currency column (default: first)")
    replay.add_argument("--pace-days", type=float, help="wait for the workers every N days")
    replay.add_argument("--dry-run", action="store_true", help="convert and report, send nothing")

    customer = sub.add_parser("customer", help="customer data requests")
    customer_sub = customer.add_subparsers(dest="action", required=True)
    erase_cmd = customer_sub.add_parser("erase", help="erase every stored trace of a customer")
    erase_cmd.add_argument("customer_id")
    erase_cmd.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the worker's confirmation (0: just send the request)",
    )

    sub.add_parser("lag", help="consumer-group lag per topic-partition, read from Kafka")

    profile = sub.add_parser("profile", help="read profiles")
    profile_sub = profile.add_subparsers(dest="action", required=True)
    show = profile_sub.add_parser("show", help="print one customer's profile")
    show.add_argument("customer_id")
    export = profile_sub.add_parser("export", help="write every profile as JSON lines")
    export.add_argument("--out", type=Path, required=True)

    args = parser.parse_args(argv)
    if args.command == "schema":
        _schema(args.out)
        return
    settings = load_settings()
    if args.command == "worker":
        _worker(settings)
    elif args.command == "topics":
        asyncio.run(create_topics(settings))
    elif args.command == "publish":
        sent = asyncio.run(publish_file(settings, args.file, args.topic, args.pace_days))
        parts = ", ".join(f"{n} to {t}" for t, n in sorted(sent.items()) if not t.startswith("!"))
        print(f"sent {sum(n for t, n in sent.items() if not t.startswith('!'))} events ({parts})")
        skipped = {t[1:]: n for t, n in sent.items() if t.startswith("!")}
        if skipped:
            print(f"skipped {sum(skipped.values())} lines: {skipped}", file=sys.stderr)
    elif args.command == "simulate":
        _simulate(settings, args)
    elif args.command == "reset":
        if not args.yes:
            print(
                f"would delete every key under {settings.key_prefix!r}; add --yes", file=sys.stderr
            )
            raise SystemExit(2)
        print(f"deleted {asyncio.run(_reset(settings))} keys under {settings.key_prefix!r}")
    elif args.command == "alerts":
        from patronage.models.contracts import parse_ts

        since = parse_ts(args.since) if args.since else None
        asyncio.run(
            _tail_alerts(
                settings,
                args.from_beginning or since is not None,
                args.limit,
                args.timeout,
                since,
                args.only,
            )
        )
    elif args.command == "segments":
        view = asyncio.run(_segments(settings))
        if args.json:
            print(json.dumps(view, indent=2))
        elif not view["segments"]:
            print("no segment model promoted yet")
        else:
            print(f"model v{view['model_version']} promoted {view['promoted_at']}")
            for row in view["segments"]:
                print(f"  [{row['segment']}] {row['customers']:>7} customers  {row['label']}")
                print(f"      {row['description']}")
    elif args.command == "replay":
        _replay(settings, args)
    elif args.command == "customer":
        confirmation = asyncio.run(_erase(settings, args.customer_id, args.wait))
        if confirmation is None and args.wait:
            print("erasure requested; no confirmation yet (is a worker running?)", file=sys.stderr)
            raise SystemExit(1)
        print(json.dumps(confirmation) if confirmation else "erasure requested")
    elif args.command == "lag":
        asyncio.run(_lag(settings))
    elif args.command == "profile":
        if args.action == "show":
            profile_doc = asyncio.run(_show(settings, args.customer_id))
            if profile_doc is None:
                print(f"no profile for customer {args.customer_id!r}", file=sys.stderr)
                raise SystemExit(1)
            print(json.dumps(profile_doc, indent=2, ensure_ascii=False))
        else:
            count = asyncio.run(_export(settings, args.out))
            print(f"exported {count} profiles to {args.out}")


def _worker(settings: Settings) -> None:
    from patronage.streams.worker import build_app

    app, _ = build_app(settings)
    # Faust owns the worker's command line; hand it the sub-command it expects.
    sys.argv = [sys.argv[0], "worker", "--loglevel", settings.log_level]
    app.main()


def _simulate(settings: Settings, args: argparse.Namespace) -> None:
    import tempfile

    from patronage.models.contracts import parse_ts
    from patronage.models.simulate import generate, to_jsonl, with_bad_events

    if args.start:
        start_ms = parse_ts(args.start)
    else:
        # Whole days back from now, so "now" sits at the end of the history.
        start_ms = (int(time.time() * 1000) // DAY_MS - args.days) * DAY_MS
    clean, personas = generate(args.customers, args.days, args.seed, start_ms)
    events = with_bad_events(clean, args.bad_rate, args.seed)
    if args.personas_out:
        args.personas_out.write_text(json.dumps(personas, indent=1, sort_keys=True) + "\n")
    if args.out:
        args.out.write_text(to_jsonl(events))
        print(f"wrote {len(events)} events for {args.customers} customers to {args.out}")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.write(to_jsonl(events))
    sent = asyncio.run(publish_file(settings, Path(handle.name), rate=args.rate or None))
    Path(handle.name).unlink()
    print(f"published {sum(sent.values())} events for {args.customers} customers")


async def _tail_alerts(
    settings: Settings,
    from_beginning: bool,
    limit: int | None,
    idle_timeout: float | None,
    since_ms: int | None = None,
    only: str | None = None,
) -> None:

    from aiokafka import AIOKafkaConsumer

    topics = []
    if only in (None, "lapse"):
        topics.append(settings.topic(settings.topic_lapse_alerts))
    if only in (None, "segments"):
        topics.append(settings.topic(settings.topic_segment_changes))
    consumer = AIOKafkaConsumer(
        *topics,
        **settings.kafka_client_kwargs(),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    shown = 0
    last = time.monotonic()
    try:
        while limit is None or shown < limit:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    if limit is not None and shown >= limit:
                        break
                    print(_alert_line(record.topic, record.value), flush=True)
                    shown += 1
                    last = time.monotonic()
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()


def _alert_line(topic: str, value: bytes | None) -> str:
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return f"{topic}: {value!r}"
    if "kind" in doc:
        return (
            f"{doc['ts']}  {doc['kind']:<11} {doc['customer_id']:<12} "
            f"last seen {doc['last_seen'][:10]}  {doc['days_since_last_visit']:6.1f} d "
            f"(usual {doc['usual_gap_days']:.1f} d)  at risk {doc['value_at_risk']:.2f}"
            f"  segment {doc['segment']}"
        )
    return (
        f"{doc.get('ts')}  segment    {doc.get('customer_id'):<12} "
        f"{doc.get('previous_segment')} -> {doc.get('segment')} {doc.get('segment_label', '')} "
        f"({doc.get('reason')}, model v{doc.get('model_version')})"
    )


async def _lag(settings: Settings) -> None:
    from patronage.streams.lag import group_lag

    rows = await group_lag(settings, waiting=True)
    print(f"consumer group {settings.group_id}")
    header = f"{'topic':<32} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}"
    print(header + f" {'waiting(s)':>11}")
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        print(
            f"{row.topic:<32} {row.partition:>9} {committed:>10} {row.end:>10} {row.lag:>8} "
            f"{row.oldest_waiting_s:>11.1f}"
        )
    worst = max((r.oldest_waiting_s for r in rows), default=0.0)
    print(f"{'total':<32} {'':>9} {'':>10} {'':>10} {sum(r.lag for r in rows):>8} {worst:>11.1f}")


def _replay(settings: Settings, args: argparse.Namespace) -> None:
    import tempfile

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from patronage.models.replay import convert, parse_mapping

    console = Console(stderr=True)
    try:
        mapping = parse_mapping(args.map)
    except ValueError as exc:
        raise SystemExit(f"patronage replay: --map: {exc}") from None
    rows = _read_rows(args.file, args.format or args.file.suffix.lstrip(".").lower())
    currency = args.currency or next(iter(settings.currencies))
    converted = convert(rows, mapping, settings.rules, int(time.time() * 1000), currency)
    sent = 0
    if converted.events and not args.dry_run:
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
            for event in converted.events:
                handle.write(json.dumps(event) + "\n")
        path = Path(handle.name)
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("replaying", total=len(converted.events))
                counts = asyncio.run(
                    publish_file(
                        settings,
                        path,
                        None,
                        args.pace_days,
                        on_sent=lambda n: progress.update(task, advance=n),
                    )
                )
            sent = sum(n for t, n in counts.items() if not t.startswith("!"))
        finally:
            path.unlink()
    print(f"rows read: {converted.rows}")
    print(f"events {'converted' if args.dry_run else 'sent'}: {sent or len(converted.events)}")
    rejected = sum(converted.rejected.values())
    print(f"rows rejected: {rejected}")
    for code, count in converted.rejected.most_common():
        print(f"  {count:>8}  {code}  (e.g. {converted.examples[code]})")
    print(f"lines dropped from kept receipts: {sum(converted.lines_dropped.values())}")
    for code, count in converted.lines_dropped.most_common():
        print(f"  {count:>8}  {code}  (e.g. {converted.examples[code]})")
    print(f"corrections: {sum(converted.corrected.values())}")
    for code, count in converted.corrected.most_common():
        print(f"  {count:>8}  {code}")


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    import csv

    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit(
                "patronage replay: reading Parquet needs pyarrow: pip install 'patronage[parquet]'"
            ) from None
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    raise SystemExit(f"patronage replay: unknown format {fmt!r}; use --format csv or parquet")


def _schema(out: Path | None) -> None:
    from patronage.models.contracts import EVENT_MODELS

    schemas = {kind: model.model_json_schema() for kind, model in EVENT_MODELS.items()}
    if out is None:
        print(json.dumps(schemas, indent=2, sort_keys=True))
        return
    out.mkdir(parents=True, exist_ok=True)
    for kind, body in schemas.items():
        (out / f"{kind}.schema.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(schemas)} schemas to {out}")


async def create_topics(settings: Settings) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.input_topics, *settings.output_topics]
        single = settings.topic(settings.topic_segment_features)
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another process may create them at the same moment; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        # One partition: exactly one worker in the group learns.
                        NewTopic(
                            t,
                            1 if t == single else settings.partitions,
                            settings.replication_factor,
                        )
                        for t in missing
                    ]
                )
        print(f"topics ready ({len(missing)} created): {', '.join(wanted)}")
        await _wait_for_group_coordinator(admin, settings.group_id)
        return missing
    finally:
        await admin.close()


async def _wait_for_group_coordinator(admin: Any, group_id: str, timeout_s: float = 60) -> None:
    """A new broker creates __consumer_offsets on the first group request and
    answers "coordinator not available" until it exists: wait it out here so
    "services up" means a broker that can serve consumer groups."""

    from aiokafka.errors import CoordinatorNotAvailableError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await admin.list_consumer_group_offsets(group_id)
            return
        except CoordinatorNotAvailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def publish_file(
    settings: Settings,
    path: Path,
    topic: str | None = None,
    pace_days: float | None = None,
    on_sent: Any = None,
    rate: float | None = None,
) -> Counter[str]:
    from aiokafka import AIOKafkaProducer

    from patronage.models.contracts import parse_ts
    from patronage.streams.lag import wait_caught_up

    pace_ms = pace_days * DAY_MS if pace_days else None
    chunk_end: int | None = None
    started = time.monotonic()

    counts: Counter[str] = Counter()
    producer = AIOKafkaProducer(
        **settings.kafka_client_kwargs(),
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        pending: list[Any] = []
        with path.open("rb") as handle:
            for line in handle:
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                target, key = _route(settings, line, topic)
                if target.startswith("!"):
                    counts[target] += 1
                    continue
                if pace_ms is not None:
                    ts = _line_ts(line, parse_ts)
                    if ts is not None:
                        if chunk_end is None:
                            chunk_end = int(ts + pace_ms)
                        elif ts >= chunk_end:
                            await asyncio.gather(*pending)
                            if on_sent is not None:
                                on_sent(len(pending))
                            pending = []
                            await wait_caught_up(settings)
                            while ts >= chunk_end:
                                chunk_end += int(pace_ms)
                pending.append(await producer.send(target, line, key=key))
                counts[target] += 1
                if rate:
                    # Offered load: hold to `rate` events per second overall.
                    sent_so_far = sum(n for t, n in counts.items() if not t.startswith("!"))
                    ahead = sent_so_far / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    if on_sent is not None:
                        on_sent(len(pending))
                    pending = []
        await asyncio.gather(*pending)
        if on_sent is not None:
            on_sent(len(pending))
    finally:
        await producer.stop()
    return counts


def _line_ts(line: bytes, parse_ts: Any) -> int | None:
    try:
        doc = json.loads(line)
        return int(parse_ts(doc["ts"]))
    except (ValueError, KeyError, TypeError):
        return None


def _route(settings: Settings, line: bytes, topic: str | None) -> tuple[str, bytes | None]:
    try:
        doc: Any = json.loads(line)
    except ValueError:
        doc = None
    key = None
    if isinstance(doc, dict) and isinstance(doc.get("customer_id"), str):
        key = doc["customer_id"].encode("utf-8")
    if topic is not None:
        return topic, key
    if not isinstance(doc, dict):
        return "!not_json", None
    kind = KIND_BY_TYPE.get(str(doc.get("type")))
    if kind is None:
        return "!unknown_type", None
    return settings.topic_for_kind[kind], key


async def _show(settings: Settings, customer_id: str) -> dict[str, object] | None:
    from patronage.streams.store import ProfileStore, redis_for

    client = redis_for(settings)
    try:
        return await ProfileStore(client, settings.key_prefix, settings.profile_config).profile(
            customer_id
        )
    finally:
        await client.aclose()


async def _export(settings: Settings, out: Path) -> int:
    from patronage.streams.store import ProfileStore, redis_for

    client = redis_for(settings)
    count = 0
    try:
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        with out.open("w", encoding="utf-8") as handle:
            async for view in store.export():
                handle.write(json.dumps(view, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
    finally:
        await client.aclose()
    return count


async def _segments(settings: Settings) -> dict[str, Any]:
    from patronage.streams.segmenting import ModelStore, segments_view
    from patronage.streams.store import redis_for

    client = redis_for(settings)
    try:
        return await segments_view(ModelStore(client, settings.key_prefix))
    finally:
        await client.aclose()


async def _erase(settings: Settings, customer_id: str, wait_s: float) -> dict[str, Any] | None:
    import uuid

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    request_id = uuid.uuid4().hex
    confirmations = settings.topic(settings.topic_erasure_confirmations)
    consumer = AIOKafkaConsumer(
        confirmations, **settings.kafka_client_kwargs(), auto_offset_reset="latest"
    )
    if wait_s:
        await consumer.start()
        await consumer.seek_to_end()
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        request = {
            "request_id": request_id,
            "customer_id": customer_id,
            "ts": int(time.time() * 1000),
        }
        await producer.send_and_wait(
            settings.topic(settings.topic_erasure_requests),
            json.dumps(request).encode(),
            key=customer_id.encode(),
        )
        if not wait_s:
            return None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    doc = json.loads(record.value or b"{}")
                    if doc.get("request_id") == request_id:
                        confirmation: dict[str, Any] = doc
                        return confirmation
        return None
    finally:
        await producer.stop()
        if wait_s:
            await consumer.stop()


async def _reset(settings: Settings) -> int:
    from patronage.streams.store import ProfileStore, redis_for

    client = redis_for(settings)
    try:
        store = ProfileStore(client, settings.key_prefix, settings.profile_config)
        return await store.delete_prefix()
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
