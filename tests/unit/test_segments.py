"""Segmenter contract suite (run over every configuration) and segment tables."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from patronage.models.features import (
    FEATURES,
    category_spend,
    features,
    rfm_inputs,
    top_category,
)
from patronage.models.jsontext import loads_own
from patronage.models.profile import judged_version
from patronage.models.segments import (
    FrozenModel,
    SegmentTrainer,
    checkpoint_text,
    decide,
    judged_floor_of,
    kmeans,
    kmeans_plus_plus,
    label_terms,
    match_ids,
    read_checkpoint,
    refit_with_checkpoint,
    sq_distances,
)
from patronage.streams.segmenting import feature_messages, feature_vector, vectors_in

CONFIGS = {
    "k2": {"n_clusters": 2, "warmup": 100},
    "k5-default": {"n_clusters": 5},
    "k12": {"n_clusters": 12, "warmup": 300},
    "k5-small-sample": {"n_clusters": 5, "warmup": 200, "sample_size": 400},
    "k5-one-start": {"n_clusters": 5, "warmup": 200, "restarts": 1},
}


def points(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = random.Random(seed)
    centres = [[rng.uniform(-3, 3) for _ in FEATURES] for _ in range(6)]
    out = []
    for _ in range(n):
        c = rng.choice(centres)
        out.append({name: v + rng.gauss(0, 0.5) for name, v in zip(FEATURES, c, strict=True)})
    return out


def trained(config: dict[str, float], seed: int = 7, n: int = 1500) -> SegmentTrainer:
    trainer = SegmentTrainer(seed=seed, warmup_days=0, **config)  # type: ignore[arg-type]
    for i, x in enumerate(points(n)):
        trainer.learn(f"c{i}", x, "food" if i % 3 else "toys")
    return trainer


def model_of(trainer: SegmentTrainer) -> FrozenModel:
    model = trainer.freeze(1)
    assert model is not None
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpoint_round_trip_fits_identically(name: str) -> None:
    trainer = trained(CONFIGS[name])
    clone = SegmentTrainer.from_checkpoint(json.loads(json.dumps(trainer.to_checkpoint())))
    for i, x in enumerate(points(300, seed=5)):
        trainer.learn(f"late{i}", x)
        clone.learn(f"late{i}", x)
    assert model_of(trainer).to_json() == model_of(clone).to_json()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_input_is_not_mutated(name: str) -> None:
    trainer = SegmentTrainer(seed=1, warmup_days=0, **CONFIGS[name])  # type: ignore[arg-type]
    for i, x in enumerate(points(600)):
        before = copy.deepcopy(x)
        trainer.learn(f"c{i}", x)
        assert x == before


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_sample_does_not_depend_on_arrival_order(name: str) -> None:
    """A sample of customers, not of events: the same customers' latest
    vectors in any arrival order give the same model."""
    stream = [(f"c{i % 700}", x) for i, x in enumerate(points(2100, seed=3))]
    latest = dict(stream)
    a = SegmentTrainer(seed=2, warmup_days=0, **CONFIGS[name])  # type: ignore[arg-type]
    for customer, x in stream:
        a.learn(customer, x)
    b = SegmentTrainer(seed=2, warmup_days=0, **CONFIGS[name])  # type: ignore[arg-type]
    for customer in sorted(latest, reverse=True):
        b.learn(customer, latest[customer])
    assert model_of(a).to_json()["centers"] == model_of(b).to_json()["centers"]


SCRIPT = """
import json
from tests.unit.test_segments import CONFIGS, trained, points, model_of
print(json.dumps({
    name: [model.predict(x) for x in points(300, seed=99)]
    for name in sorted(CONFIGS)
    if (model := model_of(trained(CONFIGS[name], seed=11)))
}))
"""


def test_same_seed_same_segments_in_a_fresh_process() -> None:
    """Every configuration, in two processes with different hash seeds (one
    process per seed: interpreter start-up was most of the time)."""
    root = Path(__file__).resolve().parents[2]
    runs = []
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, check=True
        )
        runs.append(json.loads(out.stdout))
    for name in sorted(CONFIGS):
        here = model_of(trained(CONFIGS[name], seed=11))
        expected = [here.predict(x) for x in points(300, seed=99)]
        assert runs[0][name] == runs[1][name] == expected, name


def test_n_clusters_range_is_checked() -> None:
    with pytest.raises(ValueError, match=r"2\.\.12"):
        SegmentTrainer(n_clusters=13)


def test_no_model_before_the_warm_up() -> None:
    young = SegmentTrainer(n_clusters=3, warmup=100, warmup_days=90)
    for i, x in enumerate(points(500)):
        young.learn(f"c{i}", {**x, "tenure_log_days": 3.0})  # ~19 days active
    assert young.fit() is None
    young.learn("veteran", {**points(1)[0], "tenure_log_days": 4.6})  # ~98 days
    assert young.fit() is not None
    few = SegmentTrainer(n_clusters=3, warmup=100, warmup_days=0)
    for i, x in enumerate(points(99)):
        few.learn(f"c{i}", x)
    assert few.fit() is None


def test_trainer_keeps_ids_across_promotions() -> None:
    trainer = SegmentTrainer(n_clusters=5, warmup=200, seed=3, warmup_days=0)
    data = points(4000, seed=8)
    for i, x in enumerate(data[:2000]):
        trainer.learn(f"c{i}", x, "food")
    first = trainer.freeze(1)
    for i, x in enumerate(data[2000:]):
        trainer.learn(f"d{i}", x, "food")
    second = trainer.freeze(2)
    assert first is not None and second is not None
    assert (first.version, second.version) == (1, 2)
    probe = points(500, seed=77)
    same = sum(first.predict(x) == second.predict(x) for x in probe)
    assert same / len(probe) > 0.95


def test_match_ids_undoes_a_permutation() -> None:
    trainer = SegmentTrainer(n_clusters=4, warmup=200, seed=1, warmup_days=0)
    for i, x in enumerate(points(1000)):
        trainer.learn(f"c{i}", x)
    previous = trainer.freeze(1)
    assert previous is not None
    raw = [
        [c * s + m for c, s, m in zip(center, previous.std, previous.mean, strict=True)]
        for center in previous.centers
    ]
    permuted = [raw[i] for i in (2, 0, 3, 1)]
    order = match_ids(previous, permuted, list(previous.std))
    assert [permuted[i] for i in order] == raw


def test_frozen_model_json_round_trip() -> None:
    trainer = SegmentTrainer(n_clusters=3, warmup=100, seed=1, warmup_days=0)
    for i, x in enumerate(points(500)):
        trainer.learn(f"c{i}", x, "toys")
    model = trainer.freeze(123)
    assert model is not None
    again = FrozenModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again == model
    assert all(p.label for p in model.personas)


def make_model(centers: list[list[float]]) -> FrozenModel:
    keys = ("a", "b")
    return FrozenModel(1, keys, (0.0, 0.0), (1.0, 1.0), tuple(map(tuple, centers)), (), {}, 0)


HYSTERESIS = [
    # (x, current, hysteresis) -> segment ; centres at (0,0) and (2,0)
    ((0.8, 0.0), None, 0.1, 0),
    ((1.2, 0.0), None, 0.1, 1),
    ((1.04, 0.0), 0, 0.1, 0),  # barely past the border: stays
    ((1.2, 0.0), 0, 0.1, 1),  # clearly past: moves
    ((1.04, 0.0), 0, 0.0, 1),  # no hysteresis: moves
    ((0.96, 0.0), 1, 0.1, 1),
]


@pytest.mark.parametrize(("x", "current", "hysteresis", "expected"), HYSTERESIS)
def test_hysteresis(
    x: tuple[float, float], current: int | None, hysteresis: float, expected: int
) -> None:
    model = make_model([[0.0, 0.0], [2.0, 0.0]])
    assert model.assign({"a": x[0], "b": x[1]}, current, hysteresis) == expected


RFM = [
    # recency days, frequency, monetary -> scores, with cuts 1,2,3,4 everywhere
    ((0.5, 0.5, 0.5), (5, 1, 1)),
    ((4.5, 4.5, 4.5), (1, 5, 5)),
    ((2.5, 3.0, 1.0), (3, 3, 1)),
]


@pytest.mark.parametrize(("values", "expected"), RFM)
def test_rfm_scores(values: tuple[float, float, float], expected: tuple[int, int, int]) -> None:
    cuts = (1.0, 2.0, 3.0, 4.0)
    model = FrozenModel(
        1, (), (), (), (), (), {"recency": cuts, "frequency": cuts, "monetary": cuts}, 0
    )
    assert model.rfm(*values) == expected


def rfm_model(version: int) -> FrozenModel:
    cuts = (1.0, 2.0, 3.0, 4.0)
    return FrozenModel(
        version,
        ("a", "b"),
        (0.0, 0.0),
        (1.0, 1.0),
        ((0.0, 0.0), (2.0, 0.0)),
        (),
        {"recency": cuts, "frequency": cuts, "monetary": cuts},
        0,
    )


# Stored: segment 0, RFM (5, 1, 1), scored by version 1; the features stay near
# centre 0. Rescored by version 2: (x, rfm inputs) -> (segment, changed) of the
# decision, or None (nothing written: recording the version is the pass's
# record of a partition judged whole, judged_version).
DECISIONS = [
    ((0.1, 0.0), (0.5, 0.5, 0.5), None),  # only the version is new: not written
    ((0.1, 0.0), (0.5, 2.5, 0.5), (0, False)),  # the RFM scores moved: written
    ((1.9, 0.0), (0.5, 0.5, 0.5), (1, True)),  # the segment moved: written
]


@pytest.mark.parametrize(("x", "rfm_now", "expected"), DECISIONS)
def test_what_a_scoring_decision_writes(
    x: tuple[float, float],
    rfm_now: tuple[float, float, float],
    expected: tuple[int, bool] | None,
) -> None:
    stored = {"segment": 0, "segment_version": 1, "rfm_r": 5, "rfm_f": 1, "rfm_m": 1}
    decision = decide(stored, {"a": x[0], "b": x[1]}, rfm_model(2), rfm_model(1), 0.1, rfm_now)
    assert (None if decision is None else (decision.segment, decision.changed)) == expected


# (passes recorded, partitions) -> the version every profile has been judged by
JUDGED_FLOORS = [
    ({}, 4, 0),  # no pass yet
    ({}, 0, 0),  # nothing recorded at all
    ({0: 3, 1: 3, 2: 3}, 4, 0),  # partition 3 not judged whole yet
    ({0: 3, 1: 3, 2: 3, 3: 3}, 4, 3),
    ({0: 4, 1: 3, 2: 4, 3: 4}, 4, 3),  # a pass of version 4 under way
    ({0: 4, 1: 4, 2: 4, 3: 4, 4: 2}, 4, 2),  # topics with more partitions than the setting
]


@pytest.mark.parametrize(("passes", "partitions", "expected"), JUDGED_FLOORS)
def test_the_version_every_partition_was_judged_by(
    passes: dict[int, int], partitions: int, expected: int
) -> None:
    assert judged_floor_of(passes, partitions) == expected


# (stored scoring fields, judged floor) -> the model version shown for the profile
JUDGED_VERSIONS = [
    ({}, 5, None),  # never scored: no version, whatever the passes did
    ({"segment": 1, "segment_version": 3}, 0, 3),
    ({"segment": 1, "segment_version": 3}, 5, 5),  # judged by the pass, not rewritten
    ({"segment": 1, "segment_version": 6}, 5, 6),  # moved since, by a newer model
]


@pytest.mark.parametrize(("fields", "floor", "expected"), JUDGED_VERSIONS)
def test_the_version_a_profile_was_judged_by(
    fields: dict[str, float], floor: int, expected: int | None
) -> None:
    assert judged_version(fields, floor) == expected


def test_features_of_a_profile() -> None:
    day = 86_400_000
    fields = {
        "first_seen": "0",
        "last_seen": str(10 * day),
        "orders": "2",
        "orders_online": "1",
        "clicks": "8",
        "basket_sum": "100",
        "freq_decayed": "2",
        "monetary_decayed": "100",
        "cat:food": "75",
        "cat:toys": "25",
        "#cat:": "2",
        "visits": "3",
        "first_day": "0",
        "last_day": "10",
        "gap_sumsq": "50",
        "returns_value": "10",
    }
    f = features(fields)
    assert tuple(f) == FEATURES
    assert f["visit_gap_log_days"] == pytest.approx(math.log1p(5.0))
    assert f["frequency_log"] == pytest.approx(math.log1p(2.0))
    assert f["tenure_log_days"] == pytest.approx(math.log1p(10.0))
    assert f["online_share"] == 0.5
    assert f["category_concentration"] == pytest.approx(0.75**2 + 0.25**2)
    assert f["regularity"] == pytest.approx(1.0)  # gaps 5 and 5
    assert f["return_rate"] == pytest.approx(0.1)
    # RFM inputs are valued at the scoring time; the features are not.
    recency, frequency, monetary = rfm_inputs(fields, 40 * day, 30 * day)
    assert (recency, frequency, monetary) == pytest.approx((30.0, 1.0, 50.0))


@pytest.mark.parametrize(
    ("categories", "top"),
    [
        ({"cat:food": "75", "cat:toys": "25", "#cat:": "2"}, "food"),
        # A customer past the cap: `_other` is never the top category.
        ({"cat:_other": "900", "cat:toys": "25", "#cat:": "2"}, "toys"),
        # Written before the count got its own name: `cat:#` is the count.
        ({"cat:food": "10", "cat:#": "1"}, "food"),
        ({"cat:food": "-5", "#cat:": "1"}, None),  # returned more than bought
        ({}, None),
    ],
)
def test_one_category_scan_serves_features_and_top_category(
    categories: dict[str, str], top: str | None
) -> None:
    """The pipeline reads a profile's category map once and hands it to both."""
    fields = {"first_seen": "0", "last_seen": "86400000", "orders": "2", **categories}
    spend = category_spend(fields)
    assert "#" not in spend  # a legacy count is not a category
    assert ("_other" in spend) == ("cat:_other" in fields)
    with_spend, without = features(fields, spend), features(fields)
    assert json.dumps(with_spend) == json.dumps(without)  # NaN equal to NaN
    assert top_category(fields, spend) == top_category(fields) == top
    vector = feature_vector("c1", with_spend, fields, (0.0, 0.0, 0.0), spend)
    assert vector == feature_vector("c1", without, fields, (0.0, 0.0, 0.0))


def test_a_browsing_only_profile_has_no_basket_figures() -> None:
    """No orders: the basket, category mix and return rate are unknown (NaN),
    not 0 — and the learner's message carries only the defined features, as
    strict JSON."""
    fields = {"first_seen": "0", "last_seen": str(20 * 86_400_000), "clicks": "12", "visits": "4"}
    f = features(fields)
    undefined = {k for k, v in f.items() if math.isnan(v)}
    assert undefined == {"avg_basket_log", "category_concentration", "return_rate"}
    assert f["frequency_log"] == 0.0 and f["online_share"] == 1.0
    [message] = feature_messages([feature_vector("c1", f, fields, (0.0, 0.0, 0.0))])
    doc = json.loads(
        message, parse_constant=lambda token: pytest.fail(f"{token} in the feature message")
    )
    assert set(doc["vectors"][0]["x"]) == set(FEATURES) - undefined


def test_feature_messages_carry_every_vector_exactly() -> None:
    """The learner reads back exactly what was sent (floats to the bit,
    timestamps as integers, categories in any script), in messages of at
    most FEATURE_BATCH vectors."""
    rng = random.Random(3)
    vectors = [
        {
            "id": f"loyalty_card:{i}",
            "x": {k: rng.choice([0.1 + 0.2, 1e-7, 2.5e-300, rng.random() * 1e6]) for k in FEATURES},
            "cat": rng.choice([None, "Molkereiprodukte", "épicerie fine", "日用品"]),
            "rfm": [rng.uniform(0, 400), 0.0, 1234.5],
            "h": [3, 1_767_225_600_000, 1_767_312_000_000, 42.1],
        }
        for i in range(450)
    ]
    messages = feature_messages(vectors)
    assert len(messages) == 3
    assert [v for m in messages for v in json.loads(m)["vectors"]] == vectors
    assert [v for m in messages for v in loads_own(m)["vectors"]] == vectors


def test_a_feature_message_of_an_older_worker_still_reads() -> None:
    """One vector per message, written by the standard library (which
    spelled an undefined feature NaN): the learner's reader takes it as
    before, and NaN stays NaN."""
    old = json.dumps({"id": "c1", "x": {"avg_basket_log": math.nan, "frequency_log": 0.5}})
    doc = loads_own(old.encode())
    assert doc["id"] == "c1" and doc["x"]["frequency_log"] == 0.5
    assert math.isnan(doc["x"]["avg_basket_log"])
    assert vectors_in([doc]) == [doc]


def test_an_undefined_feature_sits_at_the_mean() -> None:
    """Customers of one group who have not bought yet (basket figures
    undefined) are scored into their group, and the groups are found: read as
    0 they stood three deviations out on three features and took a segment of
    their own, merging two real groups (issue #13)."""
    rng = random.Random(5)
    missing = ("avg_basket_log", "category_concentration", "return_rate")
    # Groups 1.5 apart in behaviour; their basket figures alike and far from 0.
    centres = [[4.0 if k in missing else 1.5 * g for k in FEATURES] for g in range(3)]
    trainer = SegmentTrainer(n_clusters=3, warmup=100, warmup_days=0, seed=1)
    truth, xs = [], []
    for i in range(900):
        group = i % 3
        x = {k: c + rng.gauss(0, 0.4) for k, c in zip(FEATURES, centres[group], strict=True)}
        if group == 0 and i % 2:  # half of group 0 has not bought yet
            x = {k: (math.nan if k in missing else v) for k, v in x.items()}
        trainer.learn(f"c{i}", x)
        truth.append(group)
        xs.append(x)
    model = model_of(trainer)
    assert all(math.isfinite(v) for v in model.mean + model.std)
    predicted = [model.predict(x) for x in xs]
    groups = {t: {p for p, tt in zip(predicted, truth, strict=True) if tt == t} for t in range(3)}
    assert all(len(found) == 1 for found in groups.values())  # each group one segment
    assert len(set().union(*groups.values())) == 3  # and three different ones
    assert model.scale({})[FEATURES.index("return_rate")] == 0.0  # absent: the mean
    assert model.scale({"return_rate": math.nan})[FEATURES.index("return_rate")] == 0.0


def test_the_checkpoint_made_beside_the_refit_is_the_promoted_trainers() -> None:
    """The fit process returns the version and the checkpoint text the
    learner stores: exactly what freezing that fit on the learner's own
    trainer makes, and the learner's trainer is not touched by making them
    (in a thread it is the same object)."""
    trainer = trained(CONFIGS["k5-default"])
    twin = copy.deepcopy(trainer)
    first = refit_with_checkpoint(trainer, 1_000)
    assert first is not None and trainer.version == 0 and trainer.previous is None
    frozen_here = twin.freeze(1_000, first.fit)
    assert frozen_here is not None and first.model.to_json() == frozen_here.to_json()
    trainer.adopt(first.model)
    assert first.checkpoint == checkpoint_text(trainer) == checkpoint_text(twin)
    trainer.learn("late", points(1, seed=99)[0])
    second = refit_with_checkpoint(trainer, 2_000)
    assert second is not None and second.model.version == 2
    trainer.adopt(second.model)
    assert second.checkpoint == checkpoint_text(trainer)
    assert read_checkpoint(second.checkpoint).version == 2
    with pytest.raises(ValueError, match="does not follow"):
        trainer.adopt(first.model)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_a_checkpoint_with_undefined_features_is_json_and_fits_the_same() -> None:
    """Undefined features (NaN: a customer with one visit has no gap) were
    written as `NaN`, which is not JSON (JSON.parse refuses it); they are
    written as null and read back as undefined. Checkpoints written the old
    way still read, and every one fits as the learner it was taken from."""
    trainer = trained(CONFIGS["k5-default"])
    for i, x in enumerate(points(200, seed=3)):
        trainer.learn(f"gapless{i}", {**x, FEATURES[1]: math.nan, FEATURES[4]: math.nan})
    text = checkpoint_text(trainer)
    json.loads(text, parse_constant=_refuse_constant)  # strict JSON
    old = json.dumps(trainer.to_checkpoint())
    assert "NaN" in old
    reference = model_of(copy.deepcopy(trainer)).to_json()
    for raw in (text, text.encode(), old):
        clone = read_checkpoint(raw)
        assert sum(math.isnan(v[1]) for v in clone.sample.vectors.values()) == 200
        assert model_of(clone).to_json() == reference
    with pytest.raises(ValueError, match="not a JSON object"):
        read_checkpoint("[1, 2]")


LABELS = [
    # figures -> label terms (medians: basket 20, spend 60)
    (
        {"online_share": 0.1, "days_between_visits": 7, "active_days": 200},
        ["in-store", "weekly"],
    ),
    (
        {"online_share": 0.71, "days_between_visits": 30, "active_days": 200},
        ["online", "monthly"],
    ),
    (
        {"online_share": 0.5, "days_between_visits": 0, "active_days": 0},
        ["omnichannel", "one-off or new"],
    ),
    (
        {"online_share": 0.69, "avg_basket": 31, "spend_30d": 130},
        ["omnichannel", "big-basket", "high-spend"],
    ),
    (
        {"online_share": 0.31, "clicks_per_order": 12, "return_rate": 0.2},
        ["omnichannel", "browse-heavy", "returns a lot"],
    ),
    (
        {"online_share": 1.0, "orders_30d": 0.0, "avg_basket": 0.0, "clicks_per_order": 40},
        ["browsing, no orders", "browse-heavy"],
    ),
]


@pytest.mark.parametrize(("given", "terms"), LABELS)
def test_a_label_term_needs_its_rule(given: dict[str, float], terms: list[str]) -> None:
    figures = {
        "orders_30d": 2.0,
        "online_share": 0.5,
        "days_between_visits": 60.0,
        "active_days": 100.0,
        "avg_basket": 20.0,
        "spend_30d": 60.0,
        "clicks_per_order": 1.0,
        "return_rate": 0.0,
        **given,
    }
    assert label_terms(figures, {"avg_basket": 20.0, "spend_30d": 60.0}) == terms


def test_trainer_checkpoint_is_json_and_resumes_identically() -> None:
    """The learner's checkpoint lives in Redis: JSON only (a pickle read from
    Redis could run code), and a resumed learner learns exactly as if it had
    never stopped."""
    trainer = SegmentTrainer(n_clusters=4, warmup=100, seed=3, warmup_days=0)
    stream = points(600, seed=11)
    for i, x in enumerate(stream[:400]):
        trainer.learn(f"c{i}", x, "food")
    first = trainer.freeze(1)
    clone = SegmentTrainer.from_checkpoint(json.loads(json.dumps(trainer.to_checkpoint())))
    for i, x in enumerate(stream[400:]):
        trainer.learn(f"d{i}", x, "toys")
        clone.learn(f"d{i}", x, "toys")
    a, b = trainer.freeze(2), clone.freeze(2)
    assert first is not None and a is not None and b is not None
    assert a.to_json() == b.to_json()
    with pytest.raises(ValueError, match="segment-trainer"):
        SegmentTrainer.from_checkpoint({"format": "something else", "version": 1})


def test_rfm_quintiles_are_of_customers_not_of_updates() -> None:
    """The RFM cuts are the quintiles of the sampled customers' latest RFM
    inputs: a customer updated a thousand times counts once, with the value
    of their latest update."""
    rng = random.Random(7)
    trainer = SegmentTrainer(n_clusters=2, warmup=10, warmup_days=0)
    spends = [rng.lognormvariate(3, 1) for _ in range(2_000)]
    for i, spend in enumerate(spends):
        trainer.learn(f"c{i}", points(1, seed=i)[0], None, (float(i % 30), 1.0, spend))
    for update in range(1_000):  # one busy customer
        trainer.learn("c0", points(1)[0], None, (0.0, 1.0, 10_000.0 + update))
    spends[0] = 10_999.0
    model = model_of(trainer)
    ordered = sorted(spends)
    for cut, q in zip(model.rfm_cuts["monetary"], (0.2, 0.4, 0.6, 0.8), strict=True):
        assert ordered[int(q * len(ordered)) - 1] <= cut <= ordered[int(q * len(ordered))]
    resumed = SegmentTrainer.from_checkpoint(json.loads(json.dumps(trainer.to_checkpoint())))
    assert resumed.sample.rfm == trainer.sample.rfm
    # A version 2 checkpoint (P² markers, no RFM inputs per customer) still
    # resumes the sample; its next version keeps the promoted cuts.
    old = {**trainer.to_checkpoint(), "version": 2, "quantiles": {}}
    old["sample"] = {k: v for k, v in old["sample"].items() if k != "rfm"}
    upgraded = SegmentTrainer.from_checkpoint(old)
    assert upgraded.sample.vectors == trainer.sample.vectors and not upgraded.sample.rfm
    assert model_of(upgraded).rfm_cuts == model.rfm_cuts


def _lloyd_by_broadcast(
    z: np.ndarray, init: np.ndarray, iterations: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's iterations written the plain way (what kmeans() did before it
    used a matrix product): the centres and labels it ends with."""
    centers = init.copy()
    labels = np.zeros(len(z), dtype=int)
    for _ in range(iterations):
        new = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        for c in range(len(centers)):
            if (new == c).any():
                centers[c] = z[new == c].mean(axis=0)
        if np.array_equal(new, labels):
            break
        labels = new
    return centers, ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)


@pytest.mark.parametrize(
    ("rows", "k", "spread"),
    [(2_000, 5, 1.0), (500, 3, 4.0), (300, 8, 0.5), (50, 2, 0.0)],  # 0.0: identical rows
)
def test_kmeans_by_matrix_product_agrees_with_the_plain_distances(
    rows: int, k: int, spread: float
) -> None:
    rng = np.random.default_rng(rows + k)
    centres = rng.normal(size=(k, len(FEATURES))) * 3
    z = centres[np.arange(rows) % k] + rng.normal(size=(rows, len(FEATURES))) * spread
    d2 = sq_distances(z, (z**2).sum(axis=1), z[:k])
    assert np.allclose(d2, ((z[:, None, :] - z[None, :k, :]) ** 2).sum(axis=2), atol=1e-9)
    assert (d2 >= 0).all()
    init = kmeans_plus_plus(z, k, random.Random(7))
    centers, labels, inertia = kmeans(z, init)
    plain_centers, plain_labels = _lloyd_by_broadcast(z, init)
    assert np.array_equal(labels, plain_labels)
    assert np.allclose(centers, plain_centers, atol=1e-9)
    assert inertia >= 0
