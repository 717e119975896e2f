"""`patronage <noun> <verb>`: parse, load settings, dispatch (Click, like Faust's own CLI).

The work lives elsewhere: the worker in worker.py, Kafka administration in
kafka_admin.py, publishing in publishing.py, the erasure protocol in
erasure.py, reading outputs in outputs.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from patronage.models.profile import profile_view
from patronage.streams.settings import Settings, load_settings

if TYPE_CHECKING:
    from patronage.streams.store import Migrated

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """patronage: real-time customer profiles from Kafka into Redis.

    Settings come from PATRONAGE_* environment variables (see the README).
    """


def settings() -> Settings:
    return load_settings()


def run(work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(work(settings()))


@asynccontextmanager
async def profile_store(s: Settings) -> Any:
    from patronage.streams.store import ProfileStore, redis_for

    client = redis_for(s)
    try:
        yield ProfileStore(client, s.key_prefix, s.profile_config)
    finally:
        await client.aclose()


# -- worker, topics, schemas -------------------------------------------------


@main.group()
def worker() -> None:
    """The stream worker."""


@worker.command("run")
def worker_run() -> None:
    """Run a worker (Faust): consume the input topics, keep the profiles."""
    from patronage.streams.kafka_admin import carry_control_offsets
    from patronage.streams.worker import build_app

    s = settings()
    carried = asyncio.run(carry_control_offsets(s))
    if carried:
        click.echo(f"control topics' offsets carried over to {s.control_group_id}: {carried}")
    app, runtime = build_app(s)
    # Their imports overlap the worker's start-up (Faust, joining the group)
    # rather than the first batches of a catch-up.
    runtime.start_helpers()
    # Faust owns the worker's command line; hand it the sub-command it expects.
    sys.argv = [sys.argv[0], "worker", "--loglevel", s.log_level]
    app.main()


@main.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create the input and output topics that do not exist yet."""
    from patronage.streams.kafka_admin import create_topics

    run(create_topics)


@main.group()
def schemas() -> None:
    """The JSON Schemas of the input contracts."""


@schemas.command("export")
@click.option("--out", type=click.Path(path_type=Path), help="write <type>.schema.json files here")
def schemas_export(out: Path | None) -> None:
    """Print the schemas, or write one file per input kind."""
    from patronage.models.kinds import json_schemas

    bodies = json_schemas()
    if out is None:
        click.echo(json.dumps(bodies, indent=2, sort_keys=True))
        return
    out.mkdir(parents=True, exist_ok=True)
    for kind, body in bodies.items():
        (out / f"{kind}.schema.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {len(bodies)} schemas to {out}")


# -- events: publish, simulate, replay ---------------------------------------


@main.group()
def events() -> None:
    """Send events to the input topics."""


@events.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", help="send every line raw to this topic instead of by 'type'")
@click.option(
    "--pace-days",
    type=float,
    help="after each N days of event time, wait until the consumer group caught up "
    "(replays of history in time order, with PATRONAGE_LAPSE_CLOCK=event)",
)
def events_publish(file: Path, topic: str | None, pace_days: float | None) -> None:
    """Send a JSON-lines file of events, each to the topic of its 'type'."""
    from patronage.streams.publishing import publish_file

    sent = run(lambda s: publish_file(s, file, topic, pace_days))
    kept = {t: n for t, n in sent.items() if not t.startswith("!")}
    parts = ", ".join(f"{n} to {t}" for t, n in sorted(kept.items()))
    click.echo(f"sent {sum(kept.values())} events ({parts})")
    skipped = {t[1:]: n for t, n in sent.items() if t.startswith("!")}
    if skipped:
        click.echo(f"skipped {sum(skipped.values())} lines: {skipped}", err=True)


@events.command("simulate")
@click.option("--customers", type=int, default=200, show_default=True)
@click.option("--days", type=int, default=90, show_default=True, help="days of history")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--start", help="start of history (RFC 3339; default: DAYS days before now)")
@click.option("--out", type=click.Path(path_type=Path), help="write JSON lines, do not publish")
@click.option("--rate", type=float, default=0, help="events/s when publishing (0: no limit)")
@click.option("--bad-rate", type=float, default=0.0, help="share of extra bad events (0..1)")
@click.option("--personas-out", type=click.Path(path_type=Path), help="customer -> persona JSON")
@click.option(
    "--identities/--no-identities",
    default=True,
    show_default=True,
    help="visitors browse under a cookie until they log in, pay in store with a loyalty "
    "card registered later; the links (and a few wrong ones, undone) go to 'identities'",
)
def events_simulate(**options: Any) -> None:
    """Generate a shop/till event stream from hidden personas."""
    from patronage.streams.publishing import simulate

    click.echo(simulate(settings, **options))


@events.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--map",
    "mapping",
    required=True,
    help="column mapping, e.g. customer_id=cust,ts=date,amount=total,order_id=order,"
    "sku=sku,category=cat,quantity=qty,unit_price=price,store=store,channel=channel",
)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), help="default: suffix")
@click.option("--currency", help="when there is no currency column (default: the first)")
@click.option("--pace-days", type=float, help="wait for the workers every N days of history")
@click.option("--dry-run", is_flag=True, help="convert and report, send nothing")
def events_replay(file: Path, mapping: str, fmt: str | None, **options: Any) -> None:
    """Backfill order history (CSV or Parquet) in time order."""
    from patronage.streams.publishing import replay_file

    for line in replay_file(settings(), file, mapping, fmt, **options):
        click.echo(line)


# -- reading: alerts, segments, profiles, lag --------------------------------


@main.group()
def alerts() -> None:
    """Lapse alerts and segment changes."""


@alerts.command("tail")
@click.option("--from-beginning", is_flag=True)
@click.option("--limit", type=int, help="stop after this many")
@click.option("--timeout", type=float, help="stop after this many idle seconds")
@click.option("--only", type=click.Choice(["lapse", "segments"]), help="one kind of alert")
@click.option("--since", help="only alerts published at or after this time (RFC 3339 or ms)")
def alerts_tail(
    from_beginning: bool,
    limit: int | None,
    timeout: float | None,
    only: str | None,
    since: str | None,
) -> None:
    """Print alerts as they arrive."""
    from patronage.models.contracts import parse_ts
    from patronage.streams.outputs import tail_alerts

    since_ms = parse_ts(since) if since else None
    begin = from_beginning or since_ms is not None
    run(lambda s: tail_alerts(s, begin, limit, timeout, since_ms, only))


@main.group()
def segments() -> None:
    """Segments of the promoted model."""


@segments.command("show")
@click.option("--json", "as_json", is_flag=True)
def segments_show(as_json: bool) -> None:
    """Print each segment with its label, figures and size."""

    async def read(s: Settings) -> dict[str, Any]:
        from patronage.streams.segmenting import ModelStore, segments_view
        from patronage.streams.store import redis_for

        client = redis_for(s)
        try:
            return await segments_view(ModelStore(client, s.key_prefix))
        finally:
            await client.aclose()

    view = run(read)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    for line in segment_lines(view):
        click.echo(line)


def segment_lines(view: dict[str, Any]) -> Iterator[str]:
    if not view["segments"]:
        yield "no segment model promoted yet"
        return
    yield f"model v{view['model_version']} promoted {view['promoted_at']}"
    for row in view["segments"]:
        yield f"  [{row['segment']}] {row['customers']:>7} customers  {row['label']}"
        yield f"      {row['description']}"


@main.group()
def profile() -> None:
    """Read profiles."""


@profile.command("show")
@click.argument("customer_id")
def profile_show(customer_id: str) -> None:
    """Print one customer's profile (any identifier of theirs: the person's
    merged profile), with predictions valued now."""

    async def read(s: Settings) -> dict[str, object] | None:
        from patronage.streams.identities import Resolver
        from patronage.streams.predicting import ParameterStore, view_with_predictions
        from patronage.streams.segmenting import ModelStore

        async with profile_store(s) as store:
            parameters = ParameterStore(ModelStore(store.client, s.key_prefix))
            now = time.time() * 1000
            discount = s.prediction_discount_rate
            resolver = Resolver(store, s.profile_config, 0) if s.identity_stitching else None
            return await view_with_predictions(
                store, parameters, customer_id, now, discount, resolver
            )

    view = run(read)
    if view is None:
        raise click.ClickException(f"no profile for customer {customer_id!r}")
    click.echo(json.dumps(view, indent=2, ensure_ascii=False))


@profile.command("export")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def profile_export(out: Path) -> None:
    """Write every profile as JSON lines, with predictions valued now."""

    async def export(s: Settings) -> int:
        from patronage.models.predict import predictions
        from patronage.streams.segmenting import ModelStore

        count = 0
        async with profile_store(s) as store:
            models = ModelStore(store.client, s.key_prefix)
            fitted = await models.load_parameters()
            floor = await models.judged_floor()
            now = time.time() * 1000
            with out.open("w", encoding="utf-8") as handle:
                async for customer_id, fields in store.export_fields():
                    view = profile_view(customer_id, fields, floor)
                    view["predictions"] = predictions(
                        fields, now, fitted, s.prediction_discount_rate
                    )
                    handle.write(json.dumps(view, ensure_ascii=False, sort_keys=True) + "\n")
                    count += 1
        return count

    click.echo(f"exported {run(export)} profiles to {out}")


@main.group()
def predictions() -> None:
    """Purchase predictions (BG/NBD and Gamma-Gamma, docs/predictions.md)."""


@predictions.command("fit")
@click.option(
    "--as-of",
    help="the time the histories end (RFC 3339), e.g. the end of a backfilled "
    "calibration period; default: now",
)
def predictions_fit(as_of: str | None) -> None:
    """Fit the population parameters on the stored profiles; the next version."""
    from patronage.models.contracts import parse_ts

    now_ms = parse_ts(as_of) if as_of else int(time.time() * 1000)

    async def fit(s: Settings) -> Any:
        from patronage.streams.predicting import ParameterStore, fit_stored_profiles
        from patronage.streams.segmenting import ModelStore

        async with profile_store(s) as store:
            parameters = ParameterStore(ModelStore(store.client, s.key_prefix))
            return await fit_stored_profiles(store, parameters, now_ms)

    fitted = run(fit)
    if isinstance(fitted, str):
        raise click.ClickException(f"not fitted: {fitted}")
    click.echo(json.dumps(fitted.to_json(), indent=2))


@main.group()
def lag() -> None:
    """Consumer-group lag."""


@lag.command("show")
def lag_show() -> None:
    """Lag per topic-partition, read from Kafka."""
    from patronage.streams.lag import group_lag

    s = settings()
    rows = asyncio.run(group_lag(s, waiting=True))
    click.echo(f"consumer group {s.group_id}")
    header = f"{'topic':<32} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}"
    click.echo(header + f" {'waiting(s)':>11}")
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        click.echo(
            f"{row.topic:<32} {row.partition:>9} {committed:>10} {row.end:>10} {row.lag:>8} "
            f"{row.oldest_waiting_s:>11.1f}"
        )
    worst = max((r.oldest_waiting_s for r in rows), default=0.0)
    total = sum(r.lag for r in rows)
    click.echo(f"{'total':<32} {'':>9} {'':>10} {'':>10} {total:>8} {worst:>11.1f}")


# -- data requests and maintenance -------------------------------------------


@main.group()
def customer() -> None:
    """Customer data requests."""


@customer.command("erase")
@click.argument("customer_id")
@click.option(
    "--wait",
    type=float,
    default=30.0,
    show_default=True,
    help="seconds to wait for the worker's confirmation (0: just send the request)",
)
def customer_erase(customer_id: str, wait: float) -> None:
    """Erase every stored trace of a customer."""
    from patronage.streams.erasure import request_erasure

    confirmation = run(lambda s: request_erasure(s, customer_id, wait))
    if confirmation is None and wait:
        raise click.ClickException("erasure requested; no confirmation yet (is a worker running?)")
    click.echo(json.dumps(confirmation) if confirmation else "erasure requested")


@main.group()
def store() -> None:
    """The Redis store."""


@store.command("reset")
@click.option("--yes", is_flag=True, help="really delete")
def store_reset(yes: bool) -> None:
    """Delete every Redis key under PATRONAGE_KEY_PREFIX."""
    s = settings()
    if not yes:
        raise click.UsageError(f"would delete every key under {s.key_prefix!r}; add --yes")

    async def reset(s: Settings) -> int:
        async with profile_store(s) as store:
            removed: int = await store.delete_prefix()
            return removed

    click.echo(f"deleted {asyncio.run(reset(s))} keys under {s.key_prefix!r}")


@store.command("migrate")
def store_migrate() -> None:
    """Move stored profiles to this version's layout (stop every worker first)."""
    s = settings()

    async def migrate(s: Settings) -> Migrated:
        async with profile_store(s) as store:
            moved: Migrated = await store.migrate_layout()
            return moved

    moved = asyncio.run(migrate(s))
    click.echo(
        f"{moved.profiles} profiles under {s.key_prefix!r} read, {moved.renamed} fields "
        f"renamed, {moved.packed} profiles packed, {moved.merged} trails merged, "
        f"{moved.folded} trails moved into their profile, "
        f"{moved.indexed} partition members moved into the due sets, "
        f"{moved.compacted} trails compacted"
    )


if __name__ == "__main__":
    main()
