"""The Faust worker: wires the pipeline (streams/pipeline.py) to topics,
timers and the web.

The input topics are consumed in whole fetches by `BatchIngest`
(streams/ingest.py), a task of the app; offsets are committed only after the
pipeline finished a batch: its Redis round trip succeeded and its dead
letters were acknowledged by Kafka. Redis being down stalls the batch with
backoff; it never drops it. Faust's own agents read the low-volume control
topics (segment features, erasure requests) in the app's group.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from patronage.models.batch import Record
from patronage.models.jsontext import loads_own
from patronage.models.timeunits import DAY_MS
from patronage.streams.errors import FatalRedisError
from patronage.streams.fitpool import FitProcess
from patronage.streams.ingest import BatchIngest
from patronage.streams.kafka_transport import App as ReadCommittedApp
from patronage.streams.metrics import WorkerMetrics, watch_loop_lag
from patronage.streams.monitor import Monitor
from patronage.streams.pipeline import Pipeline
from patronage.streams.predicting import view_with_predictions
from patronage.streams.preparing import PREPARE_MODULES
from patronage.streams.retry import stop_the_worker
from patronage.streams.segmenting import FIT_MODULES, ModelStore, segments_view
from patronage.streams.settings import Settings
from patronage.streams.store import ProfileStore, redis_for
from patronage.streams.web import WebContext, blueprint, dashboard_snapshot

log = logging.getLogger("patronage.worker")


class Worker(faust.Worker):
    """Faust's worker without its terminal spinner. To spin on every log
    record, Faust set the root logger to DEBUG whenever the log level was
    warn or above (the demo's, and a usual production choice), so every
    debug call of the libraries built a record for nothing: aiokafka logs
    each send and fetch, 2-3 % of the worker's CPU at 5k events/s
    (docs/benchmarks.md)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


class FaustProducer:
    """The app's producer as the pipeline's `Producer`."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        sent: Awaitable[Any] = await self.app.producer.send(topic, key, value, None, None, None)
        return sent


class Runtime:
    """One worker process: the pipeline on Redis and Kafka, and its monitor."""

    def __init__(self, settings: Settings, app: faust.App | None = None) -> None:
        self.settings = settings
        self.redis = redis_for(settings)
        self.store = ProfileStore(
            self.redis,
            settings.key_prefix,
            settings.profile_config,
            retention_ms=int(settings.retention_days * DAY_MS),
        )
        self.metrics = WorkerMetrics()
        self.app = app
        producer = FaustProducer(app) if app is not None else None
        self.pipeline = Pipeline(
            settings,
            self.store,
            ModelStore(self.redis, settings.key_prefix),
            producer,  # type: ignore[arg-type]
            metrics=self.metrics,
        )
        self.fit_process = FitProcess(niceness=settings.fit_niceness, warm=FIT_MODULES)
        self.pipeline.learner.executor = self.fit_process
        if settings.prepare_process:  # started with the worker (start_helpers)
            self.pipeline.prepare_process = FitProcess(
                role="prepare", processes=settings.prepare_processes, warm=PREPARE_MODULES
            )
        self.ingest = BatchIngest(settings, self.pipeline)
        self.monitor = Monitor(settings, self.pipeline, self.redis)
        self.parameters = self.pipeline.parameters
        self.metrics.attach(self.pipeline, self.monitor)

    def start_helpers(self) -> None:
        """Spawn the helper processes now: each takes a second or two of CPU
        to import. The fit process too, on every worker: any worker may
        become the learner at a rebalance, and started at its assignment
        its imports (scipy.optimize) fell into the first second of a
        catch-up (6-8 % of the drain's CPU; docs/benchmarks.md)."""
        self.fit_process.start()
        if self.pipeline.prepare_process is not None:
            self.pipeline.prepare_process.start()

    def owned(self) -> set[int]:
        """The input partitions this worker owns (lapse sweeps and re-scoring follow them)."""
        return self.ingest.owned(set(self.settings.input_topics))


def freeze_startup_objects() -> None:
    """Move everything alive into the collector's permanent generation."""
    gc.collect()
    gc.freeze()


def web_context(runtime: Runtime) -> WebContext:
    """What the web views get: callables, not the runtime."""
    token = runtime.settings.web_token
    pipeline, monitor = runtime.pipeline, runtime.monitor
    return WebContext(
        token=token.get_secret_value() if token else None,
        profile=lambda customer_id: view_with_predictions(
            runtime.store,
            runtime.parameters,
            customer_id,
            time.time() * 1000,
            runtime.settings.prediction_discount_rate,
            pipeline.resolver if runtime.settings.identity_stitching else None,
        ),
        segments=lambda: segments_view(pipeline.segmenter.models),
        readiness=lambda: monitor.readiness(runtime.owned()),
        metrics=runtime.metrics.render,
        snapshot=lambda: dashboard_snapshot(pipeline, monitor),
    )


def _record(message: Any) -> Record:
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


def build_app(settings: Settings) -> tuple[faust.App, Runtime]:
    app = ReadCommittedApp(settings.control_group_id, **_app_options(settings))
    runtime = Runtime(settings, app)
    _wire_ingest(app, runtime)
    _wire_timers(app, runtime)
    _wire_learner(app, runtime)
    _wire_erasure(app, runtime)
    _wire_identities(app, runtime)
    blueprint(web_context(runtime)).register(app)
    return app, runtime


def _app_options(settings: Settings) -> dict[str, Any]:
    broker = ";".join(f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(","))
    options: dict[str, Any] = {
        "broker": broker,
        "store": "memory://",
        "datadir": settings.data_dir,
        "web_enabled": True,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "topic_disable_leader": True,
        "topic_allow_declare": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": settings.commit_interval_s,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(1.0, settings.session_timeout_s / 10),
        "producer_acks": -1,
        "stream_buffer_maxsize": max(4096, settings.batch_max * 2),
        "Worker": Worker,
    }
    ssl_context = settings.kafka_ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None
        # An ssl_context turns faust's SASL credentials into SASL_SSL.
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    elif ssl_context is not None:
        options["broker_credentials"] = faust.SSLCredentials(ssl_context)
    return options


def _raw_topic(app: faust.App, *names: str, **options: Any) -> Any:
    return app.topic(*names, key_serializer="raw", value_serializer="raw", **options)


def _wire_ingest(app: faust.App, runtime: Runtime) -> None:
    ingest = runtime.ingest

    @app.task  # type: ignore[untyped-decorator]
    async def consume_inputs() -> None:
        # What start-up built (modules, the app, its services) lives as long
        # as the worker: out of the collector's sight, a full collection no
        # longer walks it while an input batch waits (70-85 ms pauses each).
        freeze_startup_objects()
        await ingest.run()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_ingest(sender: Any, **kwargs: Any) -> None:
        ingest.stop()
        runtime.fit_process.shutdown()
        # The prepare process is shut down by the ingest loop once it ended:
        # here it could still be preparing the batch the loop waits for.


def _wire_timers(app: faust.App, runtime: Runtime) -> None:
    settings, pipeline = runtime.settings, runtime.pipeline

    @app.timer(interval=settings.lapse_sweep_interval_s)  # type: ignore[untyped-decorator]
    async def lapse_sweep() -> None:
        # Only the partitions this worker owns: the sweep moves with them.
        owned = runtime.owned()
        if owned:
            await pipeline.retry.guarded("lapse sweep", pipeline.sweeper.sweep, owned)

    @app.timer(interval=settings.segment_refresh_interval_s)  # type: ignore[untyped-decorator]
    async def segment_model_refresh() -> None:
        await pipeline.retry.guarded("model refresh", pipeline.refresh_model, runtime.owned())

    @app.timer(interval=settings.segment_refresh_interval_s)  # type: ignore[untyped-decorator]
    async def prediction_refresh() -> None:
        # New parameters: re-judge tiers and at-risk moments of the owned partitions.
        owned = runtime.owned()
        await pipeline.retry.guarded("prediction refresh", pipeline.predictor.refresh, owned)

    @app.timer(interval=settings.lag_interval_s)  # type: ignore[untyped-decorator]
    async def lag_sample() -> None:
        await runtime.monitor.sample()

    @app.task  # type: ignore[untyped-decorator]
    async def loop_lag() -> None:
        await watch_loop_lag(runtime.metrics.loop_lag_seconds.observe)

    # faust's Signal typing rejects this receiver; faust calls it (sender, signal=…) and awaits it.
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_lag_reader(sender: Any, **kwargs: Any) -> None:
        await runtime.monitor.lag_reader.close()


def _wire_learner(app: faust.App, runtime: Runtime) -> None:
    settings, pipeline = runtime.settings, runtime.pipeline
    features = _raw_topic(app, settings.topic(settings.topic_segment_features), partitions=1)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def start_fit_process(sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        # Started with the worker (`start_helpers`); here again, so a fit
        # process that died is replaced before the learner's first refit.
        if any(tp.topic == features.get_topic_name() for tp in assigned):
            runtime.fit_process.start()

    @app.agent(features, name="learn")
    async def learn(stream: Any) -> None:
        # Only the one worker that owns the single partition receives vectors.
        async for values in stream.take(1000, within=1.0):
            # The vectors are learnt in memory; a promotion waits for Redis.
            vectors = [loads_own(v) for v in values]
            await pipeline.retry.guarded("segment learner", pipeline.learner.learn, vectors)


def _wire_erasure(app: faust.App, runtime: Runtime) -> None:
    settings = runtime.settings
    requests = _raw_topic(app, settings.topic(settings.topic_erasure_requests))
    _record_agent(app, requests, "erase", runtime.pipeline.erase)


def _wire_identities(app: faust.App, runtime: Runtime) -> None:
    settings = runtime.settings
    if not settings.identity_stitching:
        return
    # One partition: one worker applies the links, in their order.
    links = _raw_topic(app, settings.topic(settings.topic_identities), partitions=1)
    _record_agent(app, links, "identities", runtime.pipeline.link)


def _record_agent(
    app: faust.App, topic: Any, name: str, handle: Callable[[Record], Awaitable[None]]
) -> None:
    """An agent handing each record of a control topic to the pipeline, in
    order; what it cannot handle stops the worker (nothing is skipped)."""

    @app.agent(topic, name=name)
    async def agent(stream: Any) -> None:
        try:
            async for event in stream.events():
                await handle(_record(event.message))
        except FatalRedisError as exc:
            stop_the_worker(name, str(exc))
        except Exception:
            stop_the_worker(name)
