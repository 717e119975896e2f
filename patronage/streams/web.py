"""HTTP views on the worker's web port: profiles, health and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faust

if TYPE_CHECKING:
    from patronage.streams.worker import Runtime


def register(app: faust.App, runtime: Runtime) -> None:
    @app.page("/profiles/{customer_id}")
    async def profile(web: Any, request: Any, customer_id: str) -> Any:
        view = await runtime.store.profile(customer_id)
        if view is None:
            return web.json(
                {"error": "not_found", "message": f"no profile for customer {customer_id!r}"},
                status=404,
            )
        return web.json(view)

    @app.page("/segments")
    async def segments(web: Any, request: Any) -> Any:
        from patronage.streams.segmenting import segments_view

        return web.json(await segments_view(runtime.segmenter.models))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.text(render_metrics(runtime), content_type="text/plain; version=0.0.4")


def render_metrics(runtime: Runtime) -> str:
    """Prometheus text exposition of the worker's counters."""
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
    family("patronage_events_rejected_total", "counter", "Events sent to the DLQ.")
    for (topic, code), count in sorted(runtime.rejected.items()):
        lines.append(f'patronage_events_rejected_total{{topic="{topic}",reason="{code}"}} {count}')
    family("patronage_events_corrected_total", "counter", "Corrections made to kept events.")
    for (topic, code), count in sorted(runtime.corrected.items()):
        lines.append(
            f'patronage_events_corrected_total{{topic="{topic}",correction="{code}"}} {count}'
        )
    family("patronage_redis_retries_total", "counter", "Batches retried because Redis failed.")
    lines.append(f"patronage_redis_retries_total {runtime.counters['redis_retries']}")
    family("patronage_redis_up", "gauge", "1 if the last Redis round trip succeeded.")
    lines.append(f"patronage_redis_up {1 if runtime.redis_ok else 0}")
    family(
        "patronage_last_event_timestamp_seconds",
        "gauge",
        "Event time of the newest applied event per partition.",
    )
    for (topic, partition), ts in sorted(runtime.last_event_ts.items()):
        lines.append(
            f'patronage_last_event_timestamp_seconds{{topic="{topic}",partition="{partition}"}} '
            f"{ts / 1000:.3f}"
        )
    family("patronage_lapse_alerts_total", "counter", "Lapse alerts sent, by kind.")
    for kind in ("lapsed", "reactivated"):
        lines.append(f'patronage_lapse_alerts_total{{kind="{kind}"}} {runtime.alerts[kind]}')
    family("patronage_segment_changes_total", "counter", "Segment changes sent, by reason.")
    for reason, count in sorted(runtime.segmenter.changes.items()):
        lines.append(f'patronage_segment_changes_total{{reason="{reason}"}} {count}')
    family("patronage_segment_model_version", "gauge", "Model version this worker scores with.")
    model = runtime.segmenter.model
    lines.append(f"patronage_segment_model_version {model.version if model else 0}")
    family("patronage_lapse_sweep_duration_seconds", "gauge", "Duration of the last lapse sweep.")
    lines.append(f"patronage_lapse_sweep_duration_seconds {runtime.sweeper.last_duration_s:.6f}")
    return "\n".join(lines) + "\n"
