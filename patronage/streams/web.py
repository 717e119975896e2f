"""HTTP views on the worker's web port: profiles, segments, health, metrics, dashboard."""

from __future__ import annotations

import hmac
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import faust

from patronage.streams.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from patronage.streams.worker import Runtime

DASHBOARD_HTML = resources.files("patronage.streams").joinpath("dashboard.html").read_text("utf-8")


def register(app: faust.App, runtime: Runtime) -> None:
    token = runtime.settings.web_token.get_secret_value() if runtime.settings.web_token else None

    def denied(web: Any, request: Any) -> Any | None:
        """Bearer-token check (probes /healthz and /readyz stay open)."""
        if token is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return web.json({"error": "unauthorized"}, status=401)

    @app.page("/profiles/{customer_id}")
    async def profile(web: Any, request: Any, customer_id: str) -> Any:
        if (refused := denied(web, request)) is not None:
            return refused
        view = await runtime.store.profile(customer_id)
        if view is None:
            return web.json(
                {"error": "not_found", "message": f"no profile for customer {customer_id!r}"},
                status=404,
            )
        return web.json(view)

    @app.page("/segments")
    async def segments(web: Any, request: Any) -> Any:
        if (refused := denied(web, request)) is not None:
            return refused
        from patronage.streams.segmenting import segments_view

        return web.json(await segments_view(runtime.segmenter.models))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, checks = await runtime.readiness(app)
        if denied(web, request) is not None:
            # Probes need the verdict, not the exception text (hosts, users).
            checks = {name: text.split(":", 1)[0] for name, text in checks.items()}
        return web.json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        if (refused := denied(web, request)) is not None:
            return refused
        return web.bytes(runtime.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    @app.page("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        return web.html(DASHBOARD_HTML)

    @app.page("/dashboard/data")
    async def dashboard_data(web: Any, request: Any) -> Any:
        if (refused := denied(web, request)) is not None:
            return refused
        return web.json(snapshot(runtime))


def snapshot(runtime: Runtime) -> dict[str, Any]:
    """What the dashboard polls: the same numbers as /metrics, as JSON."""
    now = time.time()
    partitions = []
    for row in runtime.lag_rows:
        applied = runtime.last_event_ts.get((row.topic, row.partition))
        partitions.append(
            {
                "topic": row.topic,
                "partition": row.partition,
                "lag_records": row.lag,
                "oldest_waiting_seconds": round(row.oldest_waiting_s, 3),
                "event_time_lag_seconds": round(now - applied / 1000, 3) if applied else None,
            }
        )
    model = runtime.segmenter.model
    return {
        "time": now,
        "consumed": sum(runtime.consumed.values()),
        "applied": runtime.counters["applied"],
        "rejected": sum(runtime.rejected.values()),
        "deduplicated": runtime.counters["duplicate_offsets"]
        + runtime.counters["duplicate_events"],
        "lapse_alerts": dict(runtime.alerts),
        "segment_changes": dict(runtime.segmenter.changes),
        "segment_sizes": {str(k): v for k, v in sorted(runtime.segment_sizes.items())},
        "segment_labels": [p.label for p in model.personas] if model else [],
        "model_version": model.version if model else 0,
        "redis_up": runtime.redis_ok,
        "partitions": partitions,
    }


def render_metrics(runtime: Runtime) -> str:
    """Prometheus text exposition of the worker's metrics (streams/metrics.py)."""
    return runtime.metrics.render().decode("utf-8")
