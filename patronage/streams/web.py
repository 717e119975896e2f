"""HTTP views on the worker's web port: profiles, segments, health, metrics, dashboard."""

from __future__ import annotations

import hmac
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import faust

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
        return web.text(render_metrics(runtime), content_type="text/plain; version=0.0.4")

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
    """Prometheus text exposition of the worker's counters and gauges."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("patronage_events_consumed_total", "counter", "Records read from input topics.")
    for topic, count in sorted(runtime.consumed.items()):
        lines.append(f'patronage_events_consumed_total{{topic="{topic}"}} {count}')
    family("patronage_events_applied_total", "counter", "Events applied to a profile.")
    lines.append(f"patronage_events_applied_total {runtime.counters['applied']}")
    family("patronage_events_deduplicated_total", "counter", "Redelivered or duplicate events.")
    lines.append(
        f'patronage_events_deduplicated_total{{kind="offset"}} '
        f"{runtime.counters['duplicate_offsets']}"
    )
    lines.append(
        f'patronage_events_deduplicated_total{{kind="event_id"}} '
        f"{runtime.counters['duplicate_events']}"
    )
    family("patronage_events_rejected_total", "counter", "Events sent to the DLQ, by reason.")
    for (topic, code), count in sorted(runtime.rejected.items()):
        lines.append(f'patronage_events_rejected_total{{topic="{topic}",reason="{code}"}} {count}')
    family("patronage_events_corrected_total", "counter", "Corrections made to kept events.")
    for (topic, code), count in sorted(runtime.corrected.items()):
        lines.append(
            f'patronage_events_corrected_total{{topic="{topic}",correction="{code}"}} {count}'
        )
    family(
        "patronage_lines_dropped_total",
        "counter",
        "Receipt lines dropped (line-level dead letters) from receipts that were kept.",
    )
    for (topic, code), count in sorted(runtime.lines_dropped.items()):
        lines.append(f'patronage_lines_dropped_total{{topic="{topic}",reason="{code}"}} {count}')
    family("patronage_batch_size", "summary", "Records per processed batch.")
    sizes = runtime.batch_sizes
    lines.append(f"patronage_batch_size_sum {sum(sizes)}")
    lines.append(f"patronage_batch_size_count {len(sizes)}")
    family("patronage_redis_apply_seconds", "summary", "Time of one batch's Redis round trip.")
    lines.append(f"patronage_redis_apply_seconds_sum {runtime.script_seconds_sum:.6f}")
    lines.append(f"patronage_redis_apply_seconds_count {runtime.script_calls}")
    family(
        "patronage_source_resets_total",
        "counter",
        "Topic partitions whose offsets restarted (re-created topic, truncated log).",
    )
    lines.append(f"patronage_source_resets_total {runtime.counters['source_resets']}")
    family("patronage_redis_retries_total", "counter", "Batches retried because Redis failed.")
    lines.append(f"patronage_redis_retries_total {runtime.counters['redis_retries']}")
    family("patronage_redis_up", "gauge", "1 if the last Redis round trip succeeded.")
    lines.append(f"patronage_redis_up {1 if runtime.redis_ok else 0}")

    now = time.time()
    family(
        "patronage_consumer_lag_records",
        "gauge",
        "Log end offset minus the group's committed offset (whole group, read from Kafka).",
    )
    family(
        "patronage_consumer_oldest_waiting_seconds",
        "gauge",
        "How long the oldest record not yet committed has waited in the partition.",
    )
    for row in runtime.lag_rows:
        labels = f'topic="{row.topic}",partition="{row.partition}"'
        lines.append(f"patronage_consumer_lag_records{{{labels}}} {row.lag}")
        lines.append(
            f"patronage_consumer_oldest_waiting_seconds{{{labels}}} {row.oldest_waiting_s:.3f}"
        )
    family(
        "patronage_event_time_lag_seconds",
        "gauge",
        "Now minus the event time of the last event applied by this worker, per partition.",
    )
    family(
        "patronage_last_event_timestamp_seconds",
        "gauge",
        "Event time of the newest applied event per partition.",
    )
    for (topic, partition), ts in sorted(runtime.last_event_ts.items()):
        labels = f'topic="{topic}",partition="{partition}"'
        lines.append(f"patronage_event_time_lag_seconds{{{labels}}} {now - ts / 1000:.3f}")
        lines.append(f"patronage_last_event_timestamp_seconds{{{labels}}} {ts / 1000:.3f}")

    family("patronage_lapse_alerts_total", "counter", "Lapse alerts sent, by kind.")
    for kind in ("lapsed", "reactivated"):
        lines.append(f'patronage_lapse_alerts_total{{kind="{kind}"}} {runtime.alerts[kind]}')
    family("patronage_lapse_sweep_duration_seconds", "gauge", "Duration of the last lapse sweep.")
    lines.append(f"patronage_lapse_sweep_duration_seconds {runtime.sweeper.last_duration_s:.6f}")
    family("patronage_segment_changes_total", "counter", "Segment changes sent, by reason.")
    for reason, count in sorted(runtime.segmenter.changes.items()):
        lines.append(f'patronage_segment_changes_total{{reason="{reason}"}} {count}')
    family("patronage_segment_model_version", "gauge", "Model version this worker scores with.")
    model = runtime.segmenter.model
    lines.append(f"patronage_segment_model_version {model.version if model else 0}")
    family("patronage_segment_customers", "gauge", "Customers per segment (whole deployment).")
    for segment, count in sorted(runtime.segment_sizes.items()):
        lines.append(f'patronage_segment_customers{{segment="{segment}"}} {count}')
    return "\n".join(lines) + "\n"
