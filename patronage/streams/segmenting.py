"""Segments on the worker: score with the promoted model, learn on one owner.

Every worker scores each updated profile with the latest promoted
`FrozenModel` (read from Redis). Feature vectors go to a single-partition
topic, so exactly one worker of the consumer group learns; it promotes a new
version every N vectors or T seconds and checkpoints its learner in Redis, so
a restart or a rebalance continues where it was. On a new version, each
worker re-scores the customers of the partitions it owns (reason
`model_update` for those the model moved).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2

from patronage.models.contracts import SegmentChange, format_ts
from patronage.models.features import FEATURES, defined, features, rfm_inputs, top_category
from patronage.models.jsontext import dumps_compact
from patronage.models.layout import predict_key
from patronage.models.predict import (
    HISTORY_FIELDS,
    FittedParameters,
    fit_population,
    history_record,
    purchase_history,
)
from patronage.models.profile import judged_version
from patronage.models.segments import (
    LABEL_RULES,
    CustomerSample,
    FrozenModel,
    SegmentDecision,
    SegmentTrainer,
    checkpoint_text,
    decide,
    judged_floor_of,
    read_checkpoint,
    refit_with_checkpoint,
)
from patronage.streams.fitpool import FitProcess
from patronage.streams.pacing import Pacer
from patronage.streams.scored import ScoreWrites
from patronage.streams.settings import Settings
from patronage.streams.types import ModelStoreT, ProfileStoreT

T = TypeVar("T")
# What the fit process imports when it starts (fitpool.FitProcess.start):
# the modules of what runs there (scipy.optimize among them).
FIT_MODULES = tuple(
    sorted({fn.__module__ for fn in (fit_population, checkpoint_text, refit_with_checkpoint)})
)

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]

log = logging.getLogger("patronage.segments")
# Model versions kept in Redis (and cached by each worker); older ones are deleted.
KEPT_VERSIONS = 8


class ModelStore:
    """Model versions in Redis, all under one hash tag."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        base = f"{prefix}:{{model}}:"
        self.version_key = base + "version"
        self.trainer_key = base + "trainer"
        self.sizes_key = base + "sizes"
        self.passes_key = base + "passes"
        self.parameters_key = predict_key(prefix)
        self.base = base

    def model_key(self, version: int) -> str:
        return f"{self.base}v{version}"

    async def current_version(self) -> int:
        value = await self.client.get(self.version_key)
        return int(value) if value else 0

    async def load(self, version: int) -> FrozenModel | None:
        raw = await self.client.get(self.model_key(version))
        return FrozenModel.from_json(json.loads(raw)) if raw else None

    async def promote(self, model: FrozenModel, checkpoint: str) -> None:
        # Same hash tag, executed in order: the version is set last, and the
        # version that falls out of the kept window goes (workers cache the
        # same number of versions, so none is still scoring with it).
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.model_key(model.version), json.dumps(model.to_json()))
            pipe.set(self.trainer_key, checkpoint)
            pipe.set(self.version_key, model.version)
            if model.version > KEPT_VERSIONS:
                pipe.delete(self.model_key(model.version - KEPT_VERSIONS))
            await pipe.execute()

    async def save_trainer(self, checkpoint: str) -> None:
        await self.client.set(self.trainer_key, checkpoint)

    async def load_trainer(self) -> SegmentTrainer | None:
        """The learner's JSON checkpoint; None when there is none or it is not
        one this version reads (an old pickled one is never unpickled: learning
        then starts again, continuing the promoted versions)."""
        raw = await self.client.get(self.trainer_key)
        if not raw:
            return None
        try:
            return read_checkpoint(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("segment learner checkpoint not used (%s); learning starts again", exc)
            return None

    async def sizes(self) -> dict[int, int]:
        raw = await self.client.hgetall(self.sizes_key)
        return {int(k): int(v) for k, v in raw.items()}

    async def load_parameters(self) -> FittedParameters | None:
        raw = await self.client.get(self.parameters_key)
        return FittedParameters.from_json(json.loads(raw)) if raw else None

    async def save_parameters(self, fitted: FittedParameters) -> None:
        await self.client.set(self.parameters_key, json.dumps(fitted.to_json()))

    async def record_pass(self, partition: int, version: int, partitions: int) -> None:
        # A later pass with an older version (a worker that took the
        # partition over before it picked up the newer model) lowers the
        # record: the floor can fall behind, never run ahead.
        await self.client.hset(
            self.passes_key, mapping={str(partition): version, "partitions": partitions}
        )

    async def judged_floor(self) -> int:
        stored = await self.client.hgetall(self.passes_key)
        raw = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in stored.items()}
        partitions = raw.pop("partitions", 0)
        return judged_floor_of({int(p): v for p, v in raw.items()}, partitions)

    async def adjust_sizes(self, changes: Mapping[int, int]) -> None:
        changes = {segment: by for segment, by in changes.items() if by}
        if not changes:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for segment, by in changes.items():
                pipe.hincrby(self.sizes_key, str(segment), by)
            await pipe.execute()


class Segmenter:
    def __init__(self, settings: Settings, models: ModelStoreT, store: ProfileStoreT) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.model: FrozenModel | None = None
        self._by_version: dict[int, FrozenModel] = {}
        self.changes: dict[str, int] = {"profile": 0, "model_update": 0}
        self.rescored = 0  # customers read by re-scoring passes
        self.restarts = 0  # passes restarted by a newer model
        self.rescore_busy_s = 0.0  # the passes' own time (without their rests)
        self.judged_floor = 0  # models.segments.judged_floor_of, as of the last refresh

    async def refresh(self) -> bool:
        """Load a newer promoted version; True if the model changed."""
        self.judged_floor = await self.models.judged_floor()
        version = await self.models.current_version()
        if version == 0 or (self.model is not None and self.model.version == version):
            return False
        model = await self.models.load(version)
        if model is None or model.keys != FEATURES:
            # A version learnt on another feature set (before an upgrade) is
            # not scored with; the learner promotes one on these features.
            return False
        self.model = model
        self._by_version[version] = model
        return True

    async def _scored_by(self, fields: dict[str, float | str]) -> FrozenModel | None:
        version = judged_version(fields, self.judged_floor) or 0
        if version == 0:
            return None
        if version not in self._by_version:
            model = await self.models.load(version)
            if model is None:
                return None
            self._by_version[version] = model
            for old in sorted(self._by_version)[:-KEPT_VERSIONS]:
                del self._by_version[old]
        return self._by_version[version]

    def features_of(
        self,
        profiles: dict[str, dict[str, float | str]],
        spends: Mapping[str, Mapping[str, float]] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Feature vectors of the profiles that have activity (computed once
        per batch); `spends`: their `category_spend` when the caller has it."""
        if spends is None:
            spends = {}
        return {
            cid: features(fields, spends.get(cid))
            for cid, fields in profiles.items()
            if "last_seen" in fields
        }

    async def score(
        self,
        profiles: dict[str, dict[str, float | str]],
        now_ms: float,
        xs: dict[str, dict[str, float]] | None = None,
    ) -> dict[str, SegmentDecision]:
        """Decisions for these profiles (models.segments.decide)."""
        model = self.model
        if model is None:
            return {}
        if xs is None:
            xs = self.features_of(profiles)
        half_life = self.settings.profile_config.half_life_ms
        decisions = {}
        for customer_id, x in xs.items():
            fields = profiles[customer_id]
            scored_by = await self._scored_by(fields)
            rfm_now = rfm_inputs(fields, now_ms, half_life)
            h = self.settings.segment_hysteresis
            decision = decide(fields, x, model, scored_by, h, rfm_now)
            if decision is not None:
                decisions[customer_id] = decision
        return decisions

    async def emit(
        self,
        decisions: dict[str, SegmentDecision],
        profiles: dict[str, dict[str, float | str]],
        now_ms: float,
        send: Send,
        out: ScoreWrites,
    ) -> None:
        """Send the segment changes and queue the decisions' fields in `out`;
        `settle` with what `out.flush` wrote."""
        model = self.model
        if not decisions or model is None:
            return
        topic = self.settings.topic(self.settings.topic_segment_changes)
        for customer_id, d in decisions.items():
            if not d.changed:
                continue
            persona = model.personas[d.segment] if d.segment < len(model.personas) else None
            applied = int(float(profiles[customer_id].get("events_applied", 0)))
            change = SegmentChange(
                # Same customer, model version and profile state -> same id.
                event_id=f"seg:{customer_id}:{model.version}:{applied}",
                customer_id=customer_id,
                ts=format_ts(int(now_ms)),
                previous_segment=d.previous,
                segment=d.segment,
                segment_label=persona.label if persona else "",
                model_version=model.version,
                reason="model_update" if d.reason == "model_update" else "profile",
            )
            self.changes[change.reason] += 1
            out.acks.append(
                await send(topic, customer_id.encode(), change.model_dump_json().encode())
            )
        for customer_id, d in decisions.items():
            mapping: dict[str, str | int] = {
                "segment_version": model.version,
                "rfm_r": d.rfm[0],
                "rfm_f": d.rfm[1],
                "rfm_m": d.rfm[2],
            }
            if d.changed:
                mapping.update(segment=d.segment, segment_since=int(now_ms))
            out.store(customer_id, mapping)

    async def settle(self, decisions: dict[str, SegmentDecision], written: set[str]) -> None:
        """Count the stored moves in the segment sizes."""
        moved: Counter[int] = Counter()
        for customer_id, d in decisions.items():
            if d.changed and customer_id in written:
                moved[d.segment] += 1
                if d.previous is not None:
                    moved[d.previous] -= 1
        if moved:
            await self.models.adjust_sizes(moved)

    async def rescore_partitions(
        self,
        partitions: set[int],
        now_ms: float,
        send: Send,
        between_batches: Callable[[], Awaitable[None]] | None = None,
        ingest_busy: Callable[[], float] | None = None,
    ) -> int:
        """Re-score the customers of the owned partitions (their members sets:
        the cost follows what this worker owns, not the keyspace), in slices
        that yield to ingest and rest to keep the pass to its share of the
        worker's time (pacing.py). Only customers whose segment or RFM scores
        move are written; each partition judged whole is recorded instead
        (ModelStore.record_pass, models.profile.judged_version). A newer
        model arriving mid-pass restarts the pass with it, so nobody is left
        judged by an older version."""
        seen = 0
        pacer = Pacer(self.settings.background_pass_share, between_batches, ingest_busy=ingest_busy)
        busy_before = self.rescore_busy_s
        while (model := self.model) is not None:
            finished = True
            for partition in sorted(partitions):
                cursor = 0
                while True:
                    step = partial(self._rescore_slice, partition, cursor, now_ms, send)
                    cursor, read = await pacer.slice(step)
                    seen += read
                    self.rescored += read
                    self.rescore_busy_s = busy_before + pacer.busy_s
                    finished = self.model is model
                    if cursor == 0 or not finished:
                        break
                if not finished:
                    break
                await self.models.record_pass(partition, model.version, self.settings.partitions)
            if finished:
                break
            self.restarts += 1
        self.judged_floor = await self.models.judged_floor()
        return seen

    async def _rescore_slice(
        self, partition: int, cursor: int, now_ms: float, send: Send
    ) -> tuple[int, int]:
        """One slice of a partition's members: (next cursor, customers read)."""
        size = self.settings.segment_rescore_slice
        cursor, ids = await self.store.partition_members(partition, cursor, size)
        return cursor, await self._rescore(partition, ids, now_ms, send)

    async def _rescore(self, partition: int, ids: list[str], now_ms: float, send: Send) -> int:
        if not ids:
            return 0
        profiles = await self.store.fields_of(ids)
        gone = [c for c in ids if c not in profiles]
        await self.store.forget_members(partition, gone)  # expired by retention
        decisions = await self.score(profiles, now_ms)
        out = ScoreWrites()
        await self.emit(decisions, profiles, now_ms, send, out)
        await self.settle(decisions, await out.flush(self.store))
        return len(profiles)


async def segments_view(models: ModelStoreT) -> dict[str, Any]:
    """What /segments and `patronage segments show` print."""
    version = await models.current_version()
    model = await models.load(version) if version else None
    if model is None:
        return {"model_version": None, "segments": [], "note": "no model promoted yet"}
    sizes = await models.sizes()
    return {
        "model_version": model.version,
        "promoted_at": format_ts(model.created_ms),
        # Every customer has been judged by this version or a newer one (the
        # re-scoring passes after a promotion have covered every partition).
        "judged_by_every_partition": await models.judged_floor(),
        "features": list(model.keys),
        "segments": [
            {
                "segment": i,
                "label": p.label,
                "description": p.description,
                "customers": sizes.get(i, 0),
                "sampled_customers": p.size,
                # The centroid in people's units: what each label term rests on.
                "figures": p.figures,
            }
            for i, p in enumerate(model.personas)
        ],
        "label_rules": LABEL_RULES,
        "rfm_quintile_cuts": {k: list(v) for k, v in model.rfm_cuts.items()},
    }


def partition_for(customer_id: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (murmur2)."""
    hashed: int = murmur2(customer_id.encode("utf-8"))
    return (hashed & 0x7FFFFFFF) % partitions


class Learner:
    """The single learner (owner of the segment-features partition).

    Promotion policy: the first version as soon as the warm-up sample is
    there; after that at most one per `segment_promote_interval_s`, and only
    when a refit moved a segment centre by at least `segment_promote_min_shift`
    standard deviations — a model that did not move would only re-label
    customers for nothing."""

    def __init__(
        self, settings: Settings, models: ModelStoreT, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.models = models
        self.clock = clock
        self.trainer: SegmentTrainer | None = None
        self.last_check = -math.inf
        self.loaded_version = -1
        self.promoted = 0  # versions this learner promoted
        self.promotions: list[float] = []  # clock times of those in the last hour
        self.skipped: Counter[str] = Counter()
        self.last_shift: float | None = None
        # Purchase histories of the sampled customers, for the prediction fit.
        self.histories = CustomerSample(settings.segment_sample_customers)
        self.last_fit = -math.inf
        self.fits: Counter[str] = Counter()  # outcome -> count
        self.parameters_version = 0
        self.executor: FitProcess | None = None  # set by the worker (streams/worker.py)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """k-means and the likelihood fits never run on the event loop that
        ingests: in the worker's fit process when it has one (no GIL shared
        with ingest), else in a thread."""
        if self.executor is None:
            return await asyncio.to_thread(fn, *args)
        return await self.executor.run(fn, *args)

    async def _ensure(self) -> SegmentTrainer:
        # Reload when another worker promoted since (ownership moved and back).
        version = await self.models.current_version()
        if self.trainer is None or version != self.loaded_version:
            trainer = await self.models.load_trainer()
            if trainer is None:
                s = self.settings
                trainer = SegmentTrainer(
                    n_clusters=s.segments,
                    warmup=s.segment_warmup,
                    seed=s.segment_seed,
                    sample_size=s.segment_sample_customers,
                    warmup_days=s.segment_warmup_days,
                )
                # Versions continue, and ids match the promoted model's.
                trainer.version = version
                trainer.previous = await self.models.load(version) if version else None
            self.trainer = trainer
            self.loaded_version = version
        return self.trainer

    async def learn(self, vectors: Iterable[dict[str, Any]]) -> FrozenModel | None:
        """Learn from `segment-features` messages (batches of vectors, or
        single vectors), then promote or refit when it is time."""
        vectors = list(vectors)
        model = await self._learn_segments(vectors)
        now = self.clock()
        # Until a first version exists, try again as often as segments promote.
        interval = self.settings.prediction_refit_interval_s
        if self.last_fit == -math.inf:
            # A restart does not refit parameters fitted less than an interval ago.
            stored = await self.models.load_parameters()
            if stored is not None:
                self.parameters_version = stored.version
                self.last_fit = stored.fitted_ms / 1000
        if self.parameters_version == 0:
            interval = min(interval, self.settings.segment_promote_interval_s)
        if now - self.last_fit >= interval:
            try:
                await self.fit_predictions(now)
            except Exception:  # a failed fit must never stop segment learning
                self.fits["failed"] += 1
                log.exception("prediction parameters: the fit failed; the previous version stays")
        return model

    async def _learn_segments(self, vectors: list[dict[str, Any]]) -> FrozenModel | None:
        trainer = await self._ensure()
        forgotten = False
        for message in vectors:
            if "forget" in message:  # erased customers, in order with the vectors
                for customer_id in message["forget"]:
                    self.histories.discard(customer_id)
                    forgotten |= trainer.sample.discard(customer_id)
                continue
            for doc in vectors_in([message]):
                if "id" in doc:  # vectors from before the customer sample carry no id
                    trainer.learn(doc["id"], doc["x"], doc.get("cat"), doc.get("rfm"))
                    if "h" in doc:
                        self.histories.add(doc["id"], list(doc["h"]), None)
        if forgotten and trainer.previous is not None:
            # The stored checkpoint must not keep an erased customer's vector
            # until the next promotion.
            await self.models.save_trainer(await self._off_loop(checkpoint_text, trainer))
        now = self.clock()
        first = trainer.previous is None
        if not first and now - self.last_check < self.settings.segment_promote_interval_s:
            return None
        refit = await self._off_loop(refit_with_checkpoint, trainer, int(now * 1000))
        if refit is None:
            return None
        fit = refit.fit
        self.last_check = now
        self.last_shift = None if first else fit.shift
        if not first and fit.shift < self.settings.segment_promote_min_shift:
            self.skipped["small_shift"] += 1
            return None
        trainer.adopt(refit.model)
        model = refit.model
        # The buyers' histories are a sample of their own: vectors are
        # skipped only past both cut-offs.
        sample_cut, history_cut = model.sample_cutoff, self.histories.cutoff()
        both = None if sample_cut is None or history_cut is None else max(sample_cut, history_cut)
        model = replace(model, sample_cutoff=both)
        await self.models.promote(model, refit.checkpoint)
        self.loaded_version = model.version
        self.promoted += 1
        self.promotions = [t for t in self.promotions if now - t <= 3600] + [now]
        log.info("promoted segment model v%d (largest centre move %.3f)", model.version, fit.shift)
        return model

    async def fit_predictions(self, now: float) -> FittedParameters | str:
        """Refit the prediction parameters on the sampled customers' histories;
        a failed or worse fit keeps the previous version and says why."""
        self.last_fit = now
        previous = await self.models.load_parameters()
        self.parameters_version = previous.version if previous else 0
        now_ms = int(now * 1000)
        histories = []
        for record in self.histories.vectors.values():
            history = purchase_history(dict(zip(HISTORY_FIELDS, record, strict=True)), now_ms)
            if history is not None:
                histories.append(history)
        version = self.parameters_version + 1
        fitted = await self._off_loop(fit_population, histories, version, now_ms, previous)
        if isinstance(fitted, str):
            self.fits["kept_previous"] += 1
            log.warning("prediction parameters not refitted: %s", fitted)
            return fitted
        await self.models.save_parameters(fitted)
        self.fits["fitted"] += 1
        self.parameters_version = fitted.version
        log.info("prediction parameters v%d fitted on %d customers", version, fitted.customers)
        return fitted

    def promotions_last_hour(self) -> int:
        now = self.clock()
        return sum(1 for t in self.promotions if now - t <= 3600)


def feature_vector(
    customer_id: str,
    x: dict[str, float],
    fields: dict[str, float | str],
    rfm_now: Sequence[float],
    categories: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What the learner gets of one customer: who, their features, top
    category, RFM inputs and purchase history (for the prediction parameters).
    `categories`: the profile's `category_spend`, when the caller has it."""
    top = top_category(fields, categories)
    doc: dict[str, Any] = {"id": customer_id, "x": defined(x), "cat": top}
    doc["rfm"] = list(rfm_now)
    history = history_record(fields)
    if history is not None:
        doc["h"] = history
    return doc


# Vectors per `segment-features` message (~500 bytes each: far below the
# broker's 1 MB). One message per customer cost the worker a Kafka send and
# the learner a pass through Faust's per-message stream for every update.
FEATURE_BATCH = 200


def feature_messages(vectors: Sequence[dict[str, Any]]) -> list[bytes]:
    """A batch's vectors as `{"vectors": [...]}` messages."""
    # orjson: the standard library's encoder was 2 % of a worker's main
    # thread at 5k events/s (docs/benchmarks.md).
    return [
        dumps_compact({"vectors": vectors[i : i + FEATURE_BATCH]})
        for i in range(0, len(vectors), FEATURE_BATCH)
    ]


def forget_message(customer_ids: Sequence[str]) -> bytes:
    """Tells the learner to drop erased customers from its sample."""
    return dumps_compact({"forget": list(customer_ids)})  # as the vectors beside it


def vectors_in(messages: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The vectors of `segment-features` messages: a batch, or a single
    vector as workers before batching sent them (still read after an upgrade)."""
    vectors: list[Mapping[str, Any]] = []
    for message in messages:
        vectors.extend(message.get("vectors", [message]))
    return vectors
