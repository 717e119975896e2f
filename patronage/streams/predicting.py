"""Purchase predictions on profiles: the fitted parameters in Redis, the
batch fit over the stored profiles, and the profile view with predictions
at read time (time moves even when the customer does not)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Literal

from patronage.models.contracts import TierChange, format_ts
from patronage.models.predict import (
    FittedParameters,
    fit_population,
    predictions,
    purchase_history,
)
from patronage.models.profile import profile_view
from patronage.models.risk import TIER, judge_risk, risk_alert, tiers
from patronage.streams.identities import Resolver
from patronage.streams.pacing import Pacer
from patronage.streams.scored import ScoreWrites
from patronage.streams.settings import Settings
from patronage.streams.types import Fields, ModelStoreT, People, ProfileStoreT

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]

# Workers re-read the parameters this often (a refit is rare).
CACHE_S = 30.0


class ParameterStore:
    """The current parameters, re-read from the model store every CACHE_S."""

    def __init__(self, models: ModelStoreT) -> None:
        self.models = models
        self._cached: tuple[float, FittedParameters | None] | None = None

    async def current(self) -> FittedParameters | None:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > CACHE_S:
            self._cached = (now, await self.models.load_parameters())
        return self._cached[1]

    async def save(self, fitted: FittedParameters) -> None:
        await self.models.save_parameters(fitted)
        self._cached = None


async def view_with_predictions(
    store: ProfileStoreT,
    parameters: ParameterStore,
    customer_id: str,
    now_ms: float,
    annual_discount: float,
    resolver: Resolver | None = None,
) -> dict[str, object] | None:
    """The profile as `GET /profiles/{id}` shows it, predictions valued now.
    With identity stitching the id may be any identifier of a customer: the
    answer is their person's merged profile, with its identifiers."""
    if resolver is None:
        fields = (await store.fields_of([customer_id])).get(customer_id)
        found = (customer_id, fields, [customer_id]) if fields is not None else None
    else:
        found = await resolver.view(customer_id)
    if found is None:
        return None
    canonical, fields, identifiers = found
    view = profile_view(canonical, fields, await parameters.models.judged_floor())
    view["identifiers"] = identifiers
    view["predictions"] = predictions(fields, now_ms, await parameters.current(), annual_discount)
    return view


async def fit_stored_profiles(
    store: ProfileStoreT, parameters: ParameterStore, now_ms: int
) -> FittedParameters | str:
    """Fit the population parameters on every stored profile with an order;
    saved as the next version, or the reason it was not."""
    histories = []
    chunk: list[str] = []

    async def read(ids: list[str]) -> None:
        for fields in (await store.fields_of(ids)).values():
            history = purchase_history(fields, now_ms)
            if history is not None:
                histories.append(history)

    async for customer_id in store.customer_ids():
        chunk.append(customer_id)
        if len(chunk) >= 1000:
            await read(chunk)
            chunk = []
    await read(chunk)
    previous = await parameters.current()
    version = (previous.version if previous else 0) + 1
    fitted = fit_population(histories, version, now_ms, previous)
    if isinstance(fitted, FittedParameters):
        await parameters.save(fitted)
    return fitted


class Predictor:
    """Live predictions: value tiers (and their changes on `segment-changes`)
    judged whenever a profile is applied; purchase episodes judged against
    the clock (models/risk.py) from the partition's risk queue, swept with
    the lapse queue, sending `at_risk` alerts; and a pass over the owned
    customers when a refit brings new parameters."""

    def __init__(
        self,
        settings: Settings,
        store: ProfileStoreT,
        parameters: ParameterStore,
        send: Send,
        pass_now: Callable[[set[int]], Awaitable[float]],
        people: People | None = None,
        ingest_busy: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.ingest_busy = ingest_busy  # a re-valuing pass yields to ingest by it (pacing.py)
        # part -> its person (canonical id, newest order), for linked parts
        self.people = people
        self.pass_now = pass_now  # what a pass over partitions values at
        self.store = store
        self.parameters = parameters
        self.send = send
        self.threshold = settings.prediction_at_risk_threshold
        self.discount = settings.prediction_discount_rate
        self.tier_changes: Counter[str] = Counter()
        self.at_risk_alerts = 0
        self.passes = 0
        self._pass: asyncio.Task[int] | None = None

    async def after_apply(
        self,
        profiles: Mapping[str, Fields],
        partition_of: Mapping[str, int],
        purchased: Mapping[str, float],
        now_ms: float,
        out: ScoreWrites,
    ) -> None:
        """Tiers of the applied profiles at `now_ms`; the customers whose batch
        held a purchase (customer -> its earliest time) are judged again from
        then on. That overwrites an earlier due time on purpose: a sweep that
        read the profile before this apply then finds its entry changed and
        leaves it, so the new orders are never judged from a stale read.
        The tier changes join the batch's other scoring writes in `out`
        (the caller flushes them)."""
        if not self.settings.predictions_live:
            return
        fitted = await self.parameters.current()
        if fitted is not None:
            await self.emit_tiers(profiles, fitted, now_ms, "profile", out)
        for customer_id, first_ts in purchased.items():
            if customer_id in partition_of:
                out.schedule_risk(partition_of[customer_id], customer_id, first_ts)

    async def emit_tiers(
        self,
        profiles: Mapping[str, Fields],
        fitted: FittedParameters,
        now_ms: float,
        reason: Literal["profile", "refit"],
        out: ScoreWrites,
    ) -> None:
        """Send the tier changes and queue the new tiers in `out` (stored by
        its flush, once Kafka acknowledged them)."""
        judged = tiers(profiles, fitted, now_ms, self.discount)
        topic = self.settings.topic(self.settings.topic_segment_changes)
        for customer_id, (tier, value) in judged.items():
            fields = profiles[customer_id]
            previous = fields.get(TIER)
            if previous == tier:
                continue
            applied = int(float(fields.get("events_applied", 0)))
            change = TierChange(
                # Same customer, parameters, profile state and tier -> same id.
                event_id=f"tier:{customer_id}:{fitted.version}:{applied}:{tier}",
                customer_id=customer_id,
                ts=format_ts(int(now_ms)),
                previous_tier=previous,
                tier=tier,
                predicted_clv_365d=round(value, 2),
                parameters_version=fitted.version,
                reason=reason,
            )
            payload = change.model_dump_json().encode()
            out.acks.append(await self.send(topic, customer_id.encode(), payload))
            out.store(customer_id, {TIER: tier, "tier_version": fitted.version})
            self.tier_changes[reason] += 1

    async def sweep_partition(self, partition: int, clock: float, limit: int) -> int:
        """Judge the purchase episodes of the buyers due by `clock`; the
        judged orders leave the profile only after their alerts are on Kafka
        (a crash re-sends them, same id, same content)."""
        if clock <= 0 or not self.settings.predictions_live:
            return 0
        due = await self.store.due_customers(partition, clock, limit, "risk")
        if not due:
            return 0
        fitted = await self.parameters.current()
        inputs = await self.store.risk_inputs([c for c, _ in due])
        people = await self.people(list(inputs)) if self.people is not None else {}
        topic = self.settings.topic(self.settings.topic_lapse_alerts)
        pending = []
        judged: dict[str, tuple[float | None, float | None]] = {}
        moves: list[tuple[str, float, float | None]] = []
        for customer_id, score in due:
            if customer_id not in inputs:
                moves.append((customer_id, score, None))  # erased or expired
                continue
            fields, orders = inputs[customer_id]
            judgement = judge_risk(fields, orders, fitted, self.threshold, clock)
            person = people.get(customer_id)
            for plan, episode in judgement.findings:
                assert fitted is not None
                if person is not None and person.last_order_at > plan.episode:
                    continue  # the person bought under another identifier since
                alert = risk_alert(
                    person.canonical if person is not None else customer_id,
                    episode,
                    fields.get("segment"),
                    fitted,
                    self.threshold,
                    plan,
                    self.discount,
                )
                payload = alert.model_dump_json().encode()
                pending.append(await self.send(topic, alert.customer_id.encode(), payload))
            alerted = judgement.findings[-1][0].episode if judgement.findings else None
            if judgement.decided is not None or alerted is not None:
                judged[customer_id] = (judgement.decided, alerted)
            moves.append((customer_id, score, judgement.due))
        await asyncio.gather(*pending)
        self.at_risk_alerts += len(pending)
        await self.store.record_risk(judged)
        await self.store.reschedule(partition, moves, "risk")
        return len(due)

    async def refresh(self, owned: set[int]) -> None:
        """After a refit: re-judge the tiers and at-risk moments of the owned
        partitions not yet judged with the current parameters, in a task
        (slices that yield to ingest)."""
        if not self.settings.predictions_live or not owned:
            return
        fitted = await self.parameters.current()
        if fitted is None or (self._pass is not None and not self._pass.done()):
            return
        judged = await self.store.risk_versions(sorted(owned))
        stale = {p for p, version in judged.items() if version != fitted.version}
        if stale:
            self._pass = asyncio.create_task(self.judge_partitions(stale, fitted))

    async def judge_partitions(self, partitions: set[int], fitted: FittedParameters) -> int:
        """Tiers valued with the new parameters; every buyer's next at-risk
        judgement brought forward to its new moment (an earlier one stays)."""
        seen = 0
        pacer = Pacer(self.settings.background_pass_share, ingest_busy=self.ingest_busy)
        for partition in sorted(partitions):
            cursor = 0
            while True:
                step = partial(self._judge_slice, partition, cursor, fitted)
                cursor, read = await pacer.slice(step)
                seen += read
                if cursor == 0:
                    break
            await self.store.set_risk_version(partition, fitted.version)
        self.passes += 1
        return seen

    async def _judge_slice(
        self, partition: int, cursor: int, fitted: FittedParameters
    ) -> tuple[int, int]:
        """One slice of a partition's members: (next cursor, customers read)."""
        size = self.settings.segment_rescore_slice
        cursor, ids = await self.store.partition_members(partition, cursor, size)
        inputs = await self.store.risk_inputs(ids)
        profiles = {c: fields for c, (fields, _) in inputs.items()}
        out = ScoreWrites()
        await self.emit_tiers(profiles, fitted, await self.pass_now({partition}), "refit", out)
        await out.flush(self.store)
        moments = {}
        for customer_id, (fields, orders) in inputs.items():
            due = judge_risk(fields, orders, fitted, self.threshold, -math.inf).due
            if due is not None:
                moments[customer_id] = due
        await self.store.schedule_risk({partition: moments}, keep_earlier=True)
        return cursor, len(profiles)
