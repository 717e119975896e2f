"""Purchase predictions on profiles: the fitted parameters in Redis, the
batch fit over the stored profiles, and the profile view with predictions
at read time (time moves even when the customer does not)."""

from __future__ import annotations

import time

from patronage.models.predict import (
    FittedParameters,
    fit_population,
    predictions,
    purchase_history,
)
from patronage.models.profile import profile_view
from patronage.streams.types import ModelStoreT, ProfileStoreT

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
) -> dict[str, object] | None:
    """The profile as `GET /profiles/{id}` shows it, predictions valued now."""
    fields = (await store.fields_of([customer_id])).get(customer_id)
    if fields is None:
        return None
    view = profile_view(customer_id, fields)
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
