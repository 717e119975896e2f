"""BG/NBD and Gamma-Gamma: the papers' results on their own data, and
per-customer predictions against an independent implementation (lifetimes,
the reference implementation of the buy-till-you-die papers; it is no longer
developed, which is why patronage carries its own)."""

from __future__ import annotations

import csv
import math
import warnings
from importlib.metadata import distribution
from typing import Any

import numpy as np
import pytest

from patronage.models.predict import (
    BGNBD,
    FittedParameters,
    GammaGamma,
    bgnbd_log_likelihood,
    clv,
    expected_order_value,
    expected_purchases,
    expected_purchases_new,
    fit_bgnbd,
    fit_gamma_gamma,
    fit_population,
    p_alive,
    predictions,
    purchase_history,
)

PUBLISHED_BGNBD = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_GG = GammaGamma(p=6.25, q=3.74, gamma=15.44)


def cdnow() -> list[dict[str, float]]:
    """The CDNOW sample (2,357 customers, 39-week calibration) as shipped in lifetimes."""
    path = distribution("lifetimes").locate_file(
        "lifetimes/datasets/cdnow_customers_summary_with_transactions.csv"
    )
    with open(str(path), newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_bgnbd_fit_reproduces_the_published_cdnow_parameters() -> None:
    rows = cdnow()
    assert len(rows) == 2357
    fitted = fit_bgnbd([r["x"] for r in rows], [r["t_x"] for r in rows], [r["T"] for r in rows])
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fitted, name) == pytest.approx(getattr(PUBLISHED_BGNBD, name), rel=0.01)


def test_gamma_gamma_fit_reproduces_the_published_cdnow_parameters() -> None:
    rows = cdnow()
    fitted = fit_gamma_gamma([r["x"] for r in rows], [r["zbar"] for r in rows])
    for name in ("p", "q", "gamma"):
        assert getattr(fitted, name) == pytest.approx(getattr(PUBLISHED_GG, name), rel=0.01)


def test_a_fit_the_data_do_not_identify_stops_within_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every customer spending the same per order leaves the spend model a
    flat ridge: the optimiser walked it for 40,000 evaluations per run
    (80,000 in all, 2.6 s of the fit process for 400 customers) and ended
    where it stood after a few thousand."""
    from patronage.models import predict

    calls = 0
    likelihood = predict.gamma_gamma_log_likelihood

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return likelihood(*args)

    monkeypatch.setattr(predict, "gamma_gamma_log_likelihood", counted)
    fitted = fit_gamma_gamma([1.0, 2.0, 3.0, 5.0] * 50, [20.0] * 200)
    assert calls <= 8_000
    assert fitted.q > 1e6  # still the ridge's point: no spread between customers


CUSTOMERS = [
    # x, t_x, T (weeks)
    (0, 0.0, 38.86),  # never came back
    (2, 30.43, 38.86),
    (1, 1.71, 38.86),
    (5, 38.86, 38.86),  # bought at the end: t_x = T
    (14, 20.0, 52.0),
    (200, 150.0, 156.0),  # very large x
    (3, 0.5, 1.0),  # young customer
]


def reference() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandas as pd
        from lifetimes import BetaGeoFitter

    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(PUBLISHED_BGNBD.__dict__)
    return fitter


@pytest.mark.parametrize(("x", "t_x", "T"), CUSTOMERS)
def test_p_alive_and_expected_orders_match_an_independent_implementation(
    x: int, t_x: float, T: float
) -> None:
    fitter = reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_alive = float(np.asarray(fitter.conditional_probability_alive(x, t_x, T)).item())  # type: ignore[attr-defined]
        want = {
            t: float(fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T))  # type: ignore[attr-defined]
            for t in (4.3, 13.0, 52.0)
        }
    assert p_alive(PUBLISHED_BGNBD, x, t_x, T) == pytest.approx(want_alive, rel=1e-9)
    for t, value in want.items():
        assert expected_purchases(PUBLISHED_BGNBD, t, x, t_x, T) == pytest.approx(value, rel=1e-9)


def test_literal_cases() -> None:
    # No repeat purchase: alive for sure (nobody can drop out before buying again).
    assert p_alive(PUBLISHED_BGNBD, 0, 0.0, 38.86) == 1.0
    # Bought at the very end of the window: the odds term is a / (b + x - 1).
    a, b = PUBLISHED_BGNBD.a, PUBLISHED_BGNBD.b
    assert p_alive(PUBLISHED_BGNBD, 5, 10.0, 10.0) == pytest.approx(
        1 / (1 + a / (b + 4)), rel=1e-12
    )
    # Many purchases long ago: practically gone, without overflow.
    assert p_alive(PUBLISHED_BGNBD, 500, 1.0, 500.0) < 1e-100
    assert expected_purchases(PUBLISHED_BGNBD, 0, 2, 30.0, 38.0) == 0.0
    assert expected_purchases_new(PUBLISHED_BGNBD, 0) == 0.0


def test_log_likelihood_sums_to_the_published_value() -> None:
    """FHL 2005 report LL = -9582.4 at the published parameters."""
    rows = cdnow()
    total = bgnbd_log_likelihood(
        PUBLISHED_BGNBD,
        np.array([r["x"] for r in rows]),
        np.array([r["t_x"] for r in rows]),
        np.array([r["T"] for r in rows]),
    ).sum()
    assert total == pytest.approx(-9582.4, abs=0.5)


@pytest.mark.parametrize(("x", "zbar"), [(0, 0.0), (1, 11.77), (2, 22.35), (30, 40.0)])
def test_expected_order_value_matches_an_independent_implementation(x: int, zbar: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandas as pd
        from lifetimes import GammaGammaFitter

        fitter = GammaGammaFitter()
        fitter.params_ = pd.Series({"p": 6.25, "q": 3.74, "v": 15.44})
        want = float(
            fitter.conditional_expected_average_profit(pd.Series([x]), pd.Series([zbar])).iloc[0]
        )
    assert expected_order_value(PUBLISHED_GG, x, zbar) == pytest.approx(want, rel=1e-9)


def test_clv_is_discounted_expected_orders_times_value() -> None:
    undiscounted = clv(PUBLISHED_BGNBD, PUBLISHED_GG, 2, 30.43, 38.86, 22.35, annual_discount=0)
    orders = expected_purchases(PUBLISHED_BGNBD, 52, 2, 30.43, 38.86)
    value = expected_order_value(PUBLISHED_GG, 2, 22.35)
    assert undiscounted == pytest.approx(orders * value, rel=1e-9)
    discounted = clv(PUBLISHED_BGNBD, PUBLISHED_GG, 2, 30.43, 38.86, 22.35, annual_discount=0.1)
    assert orders * value / 1.1 < discounted < undiscounted
    assert not math.isnan(clv(PUBLISHED_BGNBD, PUBLISHED_GG, 0, 0, 38.86, 0))


WEEK = 7 * 86_400_000


def test_purchase_history_of_a_profile() -> None:
    fields = {
        "first_order_at": "0",
        "first_order_value": "20",
        "last_order_at": str(3 * WEEK),
        "orders": "4",
        "basket_sum": "110",
    }
    assert purchase_history(fields, 10 * WEEK) == (3.0, 3.0, 10.0, 30.0)
    assert purchase_history({"clicks": "4"}, 10 * WEEK) is None
    one = {"first_order_at": str(WEEK), "orders": "1", "basket_sum": "9", "first_order_value": "9"}
    assert purchase_history(one, 3 * WEEK) == (0.0, 0.0, 2.0, 0.0)


def test_predictions_say_why_they_are_absent() -> None:
    fields = {"first_order_at": "0", "orders": "1", "basket_sum": "9", "first_order_value": "9"}
    assert predictions(fields, WEEK, None)["reason"].startswith("no fitted parameters")
    fitted = FittedParameters(3, PUBLISHED_BGNBD, PUBLISHED_GG, 2357, 0)
    assert predictions({"clicks": "2"}, WEEK, fitted)["reason"] == "no order yet"
    shown = predictions(fields, 10 * WEEK, fitted)
    assert shown["available"] and shown["parameters_version"] == 3
    assert shown["p_alive"] == 1.0  # no repeat order yet: nobody dropped out
    assert shown["expected_orders_30d"] == pytest.approx(
        expected_purchases(PUBLISHED_BGNBD, 30 / 7, 0, 0, 10), rel=1e-12
    )
    assert fit_population([(1.0, 1.0, 2.0, 5.0)] * 10, 1, 0) == (
        "10 customers with an order; at least 100 are needed"
    )


def test_a_simulated_shop_fits_and_lapsed_buyers_look_less_alive() -> None:
    from patronage.models.simulate import generate
    from patronage.streams.settings import Settings
    from tests.unit.test_pipeline import START_MS, as_records, pipeline_for

    settings = Settings()
    events, _ = generate(customers=400, days=240, seed=3, start_ms=START_MS)
    end = START_MS + 241 * 86_400_000
    pipe, store = pipeline_for(settings, end)
    records = as_records(events, settings.partitions)
    pipe.test([records[i : i + 1000] for i in range(0, len(records), 1000)])
    fields = {c: store._fields(s) for c, s in store.states.items()}
    histories = [h for f in fields.values() if (h := purchase_history(f, end)) is not None]
    fitted = fit_population(histories, 1, end)
    assert isinstance(fitted, FittedParameters), fitted
    alive = {c: predictions(f, end, fitted) for c, f in fields.items() if "first_order_at" in f}
    recent = [
        a["p_alive"]
        for c, a in alive.items()
        if end - float(fields[c]["last_order_at"]) < 14 * 86_400_000
    ]
    gone = [
        a["p_alive"]
        for c, a in alive.items()
        if end - float(fields[c]["last_order_at"]) > 60 * 86_400_000
        and float(fields[c]["orders"]) > 3
    ]
    assert recent and gone
    assert sum(gone) / len(gone) < 0.5 < sum(recent) / len(recent)


def test_the_learner_refits_prediction_parameters_on_its_schedule() -> None:
    import asyncio

    from patronage.models.simulate import generate
    from patronage.streams.memory import MemoryModelStore, RecordingProducer
    from patronage.streams.settings import Settings
    from tests.unit.test_pipeline import START_MS, as_records, pipeline_for

    settings = Settings(prediction_refit_interval_s=3600)
    events, _ = generate(customers=240, days=150, seed=4, start_ms=START_MS)
    pipe, _ = pipeline_for(settings, START_MS + 151 * 86_400_000)
    records = as_records(events, settings.partitions)
    pipe.test([records[i : i + 1000] for i in range(0, len(records), 1000)])
    assert isinstance(pipe.producer, RecordingProducer)
    vectors = pipe.producer.on("segment-features")
    models = pipe.learner.models
    assert isinstance(models, MemoryModelStore)
    clock = [START_MS / 1000 + 151 * 86_400]
    pipe.learner.clock = lambda: clock[0]

    async def run() -> list[int | None]:
        versions = []
        for advance in (0, 60, 3600):
            clock[0] += advance
            await pipe.learner.learn(vectors)
            fitted = await models.load_parameters()
            versions.append(fitted.version if fitted else None)
        return versions

    # Fitted at once, not again within the hour, then again (same data: as good).
    assert asyncio.run(run()) == [1, 1, 2]
    assert pipe.learner.fits == {"fitted": 2}
    # Before any version exists, a failed fit is retried at the promotion
    # interval, not an hour later.
    early = Settings(prediction_refit_interval_s=3600, segment_promote_interval_s=300)
    young, _ = pipeline_for(early, START_MS)
    young.learner.clock = lambda: clock[0]
    attempts = []
    for advance in (0, 60, 300):
        clock[0] += advance
        asyncio.run(young.learner.learn([]))
        attempts.append(sum(young.learner.fits.values()))
    assert attempts == [1, 1, 2]
    few = Settings(prediction_refit_interval_s=1)
    small, _ = pipeline_for(few, START_MS)
    small.learner.histories.add("only-one", [0.0, 0.0, 1.0, 10.0, 10.0], None)
    reason = asyncio.run(small.learner.fit_predictions(START_MS / 1000))
    assert reason == "1 customers with an order; at least 100 are needed"
    assert small.learner.fits == {"kept_previous": 1}


def test_value_tiers_follow_the_fitted_quantiles() -> None:
    fitted = FittedParameters(1, PUBLISHED_BGNBD, PUBLISHED_GG, 2357, 0, (10.0, 200.0))
    loyal = {
        "first_order_at": "0",
        "first_order_value": "40",
        "last_order_at": str(30 * WEEK),
        "orders": "20",
        "basket_sum": "1000",
    }
    gone = {**loyal, "last_order_at": str(WEEK), "orders": "2", "basket_sum": "50"}
    assert predictions(loyal, 31 * WEEK, fitted)["value_tier"] == "best"
    assert predictions(gone, 60 * WEEK, fitted)["value_tier"] == "low_value"
    again = FittedParameters.from_json(fitted.to_json())
    assert again == fitted


def test_a_degenerate_or_failing_fit_never_stops_segment_learning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from patronage.streams import segmenting
    from patronage.streams.memory import MemoryModelStore
    from patronage.streams.segmenting import Learner
    from patronage.streams.settings import Settings

    assert p_alive(BGNBD(0.2, 4.0, 0.8, 0.0), 1, 2.0, 5.0) == 0.0  # b + x - 1 = 0

    def broken(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("the optimiser blew up")

    monkeypatch.setattr(segmenting, "fit_population", broken)
    settings = Settings(segments=2, segment_warmup=10)
    learner = Learner(settings, MemoryModelStore(), clock=lambda: 0.0)
    vectors = [
        {"id": f"c{i}", "x": {"tenure_log_days": 5.0, "online_share": float(i % 2)}}
        for i in range(40)
    ]
    model = asyncio.run(learner.learn(vectors))
    assert model is not None and model.version == 1
    assert learner.fits == {"failed": 1}
