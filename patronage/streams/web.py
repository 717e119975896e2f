"""HTTP views on the worker's web port: profiles, segments, health, metrics,
dashboard — a Faust blueprint that gets only what it needs (`WebContext`)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from faust import web as faust_web

from patronage.streams.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from patronage.streams.monitor import Monitor
    from patronage.streams.pipeline import Pipeline

DASHBOARD_HTML = resources.files("patronage.streams").joinpath("dashboard.html").read_text("utf-8")


@dataclass(frozen=True)
class WebContext:
    token: str | None
    profile: Callable[[str], Awaitable[dict[str, object] | None]]
    segments: Callable[[], Awaitable[dict[str, Any]]]
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
    metrics: Callable[[], bytes]
    snapshot: Callable[[], dict[str, Any]]


def blueprint(ctx: WebContext) -> faust_web.Blueprint:
    views = faust_web.Blueprint("patronage")

    def denied(web: Any, request: Any) -> Any | None:
        """Bearer-token check (probes /healthz and /readyz stay open)."""
        if ctx.token is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {ctx.token}".encode()):
            return None
        return web.json({"error": "unauthorized"}, status=401)

    @views.route("/profiles/{customer_id}")
    async def profile(web: Any, request: Any, customer_id: str) -> Any:
        if (refused := denied(web, request)) is not None:
            return refused
        view = await ctx.profile(customer_id)
        if view is None:
            message = f"no profile for customer {customer_id!r}"
            return web.json({"error": "not_found", "message": message}, status=404)
        return web.json(view)

    @views.route("/segments")
    async def segments(web: Any, request: Any) -> Any:
        return denied(web, request) or web.json(await ctx.segments())

    @views.route("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @views.route("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, checks = await ctx.readiness()
        if denied(web, request) is not None:
            # Probes need the verdict, not the exception text (hosts, users).
            checks = {name: text.split(":", 1)[0] for name, text in checks.items()}
        return web.json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    @views.route("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        refused = denied(web, request)
        return refused or web.bytes(ctx.metrics(), content_type=METRICS_CONTENT_TYPE)

    @views.route("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        return web.html(DASHBOARD_HTML)

    @views.route("/dashboard/data")
    async def dashboard_data(web: Any, request: Any) -> Any:
        return denied(web, request) or web.json(ctx.snapshot())

    return views


def dashboard_snapshot(pipeline: Pipeline, monitor: Monitor) -> dict[str, Any]:
    """What the dashboard polls: the same numbers as /metrics, as JSON."""
    now = time.time()
    stats = pipeline.stats
    partitions = []
    for row in monitor.lag_rows:
        applied = stats.last_event_ts.get((row.topic, row.partition))
        partitions.append(
            {
                "topic": row.topic,
                "partition": row.partition,
                "lag_records": row.lag,
                "oldest_waiting_seconds": round(row.oldest_waiting_s, 3),
                "event_time_lag_seconds": round(now - applied / 1000, 3) if applied else None,
            }
        )
    segmenter = pipeline.segmenter
    model = segmenter.model
    return {
        "time": now,
        "consumed": sum(stats.consumed.values()),
        "applied": stats.counters["applied"],
        "rejected": sum(stats.rejected.values()),
        "deduplicated": stats.counters["duplicate_offsets"] + stats.counters["duplicate_events"],
        "lapse_alerts": dict(stats.alerts),
        "segment_changes": dict(segmenter.changes),
        "segment_sizes": {str(k): v for k, v in sorted(monitor.segment_sizes.items())},
        "segment_labels": [p.label for p in model.personas] if model else [],
        "model_version": model.version if model else 0,
        "redis_up": pipeline.retry.ok,
        "partitions": partitions,
    }
