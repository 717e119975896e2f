"""Segmentation: a sample of customers, a k-means refit, frozen versions,
stable ids, honest personas.

* The learner keeps each sampled customer's latest feature vector
  (`CustomerSample`: a bottom-k sample by a hash of the customer id, so it is
  a uniform sample of customers — not of events — and the same whatever the
  arrival order). Learning from a share of *events* over-weighted early,
  immature profiles and the customers who act most.
* `SegmentTrainer.fit()` runs k-means on the standardised sample: warm-started
  from the current centres (stable), or from the best of several seeded
  k-means++ starts when that is clearly better (escapes an early, immature
  optimum). `freeze()` makes the `FrozenModel` every worker scores with.
* At each freeze the new centres are matched to the previous version's with
  the Hungarian assignment, so segment 3 stays segment 3.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import math
import random
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from mypy_extensions import mypyc_attr
from scipy.optimize import linear_sum_assignment

from patronage.models.features import FEATURES, UNDEFINED


def customer_hash(customer_id: str) -> int:
    """64-bit hash of a customer id (the sample keeps the smallest)."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big")


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass
class CustomerSample:
    """The latest feature vector (and top category, RFM inputs) of at most
    `size` customers: those with the smallest id hashes seen so far."""

    size: int = 10_000
    vectors: dict[str, list[float]] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)
    rfm: dict[str, list[float]] = field(default_factory=dict)
    _heap: list[tuple[int, str]] = field(default_factory=list)  # (-hash, id): largest first

    def add(
        self,
        customer_id: str,
        vector: list[float],
        category: str | None,
        rfm: Sequence[float] | None = None,
    ) -> None:
        if customer_id not in self.vectors:
            h = customer_hash(customer_id)
            if len(self.vectors) >= self.size:
                if h >= -self._heap[0][0]:
                    return
                _, evicted = heapq.heappop(self._heap)
                self._drop(evicted)
            heapq.heappush(self._heap, (-h, customer_id))
        self.vectors[customer_id] = vector
        if category:
            self.categories[customer_id] = category
        if rfm is not None and len(rfm) == len(RFM_DIMENSIONS):
            self.rfm[customer_id] = [float(v) for v in rfm]

    def discard(self, customer_id: str) -> bool:
        """Drop a customer (erased): True when they were sampled."""
        if customer_id not in self.vectors:
            return False
        self._drop(customer_id)
        self._heap = [(h, c) for h, c in self._heap if c != customer_id]
        heapq.heapify(self._heap)
        return True

    def _drop(self, customer_id: str) -> None:
        del self.vectors[customer_id]
        self.categories.pop(customer_id, None)
        self.rfm.pop(customer_id, None)

    def __len__(self) -> int:
        return len(self.vectors)

    def cutoff(self) -> int | None:
        """Once full, the largest hash kept: a customer hashing above it can
        never enter, so its vectors need not be sent. None while not full."""
        return -self._heap[0][0] if len(self.vectors) >= self.size else None

    def ordered(self) -> list[str]:
        """The sampled ids in hash order: the same order in every process."""
        return [c for _, c in sorted((-h, c) for h, c in self._heap)]

    def state(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "vectors": self.vectors,
            "categories": self.categories,
            "rfm": self.rfm,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CustomerSample:
        sample = cls(int(state["size"]))
        categories, rfm = state["categories"], state.get("rfm", {})
        for customer_id, vector in state["vectors"].items():
            # null: an undefined feature (checkpoint_text)
            defined = [UNDEFINED if v is None else v for v in vector]
            sample.add(customer_id, defined, categories.get(customer_id), rfm.get(customer_id))
        return sample

    def rfm_cuts(self) -> dict[str, tuple[float, ...]]:
        """Quintile cuts of each RFM input over the sampled customers (each
        counted once, as of their latest update: quintiles of the customer
        base, not of the updates, which would weigh the busiest customers)."""
        values = np.array(list(self.rfm.values()), dtype=float).reshape(-1, len(RFM_DIMENSIONS))
        return {
            name: tuple(
                float(q)
                for q in (np.quantile(values[:, i], RFM_QUINTILES) if len(values) else [0.0] * 4)
            )
            for i, name in enumerate(RFM_DIMENSIONS)
        }


def sq_distances(z: np.ndarray, z_norms: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row to every centre, as |z|^2 - 2 z.c + |c|^2:
    one matrix product instead of an n x k x d array per iteration (the
    refit ran ~7x slower, competing with ingest for the cores)."""
    d2: np.ndarray = z_norms[:, None] - 2.0 * (z @ centers.T) + (centers**2).sum(axis=1)[None, :]
    np.maximum(d2, 0.0, out=d2)  # rounding must not make a distance negative
    return d2


def kmeans(
    z: np.ndarray, init: np.ndarray, iterations: int = 30
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's iterations from `init`: (centres, labels, inertia)."""
    centers = init.copy()
    z_norms = (z**2).sum(axis=1)
    ids = np.arange(len(centers))[:, None]
    labels = np.zeros(len(z), dtype=int)
    for _ in range(iterations):
        new_labels = sq_distances(z, z_norms, centers).argmin(axis=1)
        members = (new_labels[None, :] == ids).astype(float)  # k x n, one-hot
        counts = members.sum(axis=1)
        filled = counts > 0  # an emptied centre stays where it was
        centers[filled] = (members @ z)[filled] / counts[filled, None]
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    d2 = sq_distances(z, z_norms, centers)
    labels = d2.argmin(axis=1)
    return centers, labels, float(d2.min(axis=1).sum())


def kmeans_plus_plus(z: np.ndarray, k: int, rng: random.Random) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn does it): each next centre
    is the best of 2 + log(k) candidates drawn in proportion to the squared
    distance to the nearest centre so far, from a seeded RNG."""
    trials = 2 + int(math.log(k))
    z_norms = (z**2).sum(axis=1)
    centers = [z[rng.randrange(len(z))]]
    closest = sq_distances(z, z_norms, centers[0][None, :])[:, 0]
    while len(centers) < k:
        total = float(closest.sum())
        if total == 0:
            centers.append(z[rng.randrange(len(z))])
            continue
        cumulative = np.cumsum(closest)
        picks = [
            min(int(np.searchsorted(cumulative, rng.random() * total)), len(z) - 1)
            for _ in range(trials)
        ]
        candidates = np.minimum(closest[:, None], sq_distances(z, z_norms, z[picks]))
        best = int(candidates.sum(axis=0).argmin())  # the first of equals, as min() did
        centers.append(z[picks[best]])
        closest = candidates[:, best]
    return np.array(centers, dtype=float)


def standardise(value: float, mean: float, std: float) -> float:
    if math.isnan(value):
        return 0.0
    return max(-CLIP, min(CLIP, (value - mean) / std))


def defined_mean_std(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, mean and standard deviation of the defined (non-NaN)
    values; a column with too few of them: mean 0, deviation 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nan_to_num(np.nanmean(raw, axis=0))
        std = np.nan_to_num(np.nanstd(raw, axis=0, ddof=1))
    std[std == 0] = 1.0
    return mean, std


def defined_median(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(np.median(defined)) if len(defined) else 0.0


# ---------------------------------------------------------------------------


def _quintile(value: float, cuts: Sequence[float]) -> int:
    """1-5: how many of the quintile cuts `value` is above, plus one."""
    return 1 + sum(1 for c in cuts if value > c)


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class Persona:
    label: str
    description: str
    size: int  # customers of the sample in this segment when it was frozen
    figures: dict[str, float]  # the centroid in people's units: what the label rests on


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class FrozenModel:
    """What every worker scores with; immutable, JSON-serialisable."""

    version: int
    keys: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    centers: tuple[tuple[float, ...], ...]
    personas: tuple[Persona, ...]
    rfm_cuts: dict[str, tuple[float, ...]]
    created_ms: int
    # The learner's sample cut-off when the model was made (CustomerSample.cutoff).
    sample_cutoff: int | None = None

    def scale(self, x: Mapping[str, float]) -> list[float]:
        """Standardised and clipped; an undefined feature (absent or NaN) is
        at the mean, so it does not pull the customer anywhere."""
        return [
            standardise(float(x.get(k, UNDEFINED)), m, s)
            for k, m, s in zip(self.keys, self.mean, self.std, strict=True)
        ]

    def distances(self, x: Mapping[str, float]) -> list[float]:
        z = self.scale(x)
        # math.dist: one C call per centre (a generator of squares was a
        # sixth of a re-scoring pass).
        return [math.dist(c, z) for c in self.centers]

    def predict(self, x: Mapping[str, float]) -> int:
        d = self.distances(x)
        return d.index(min(d))

    def assign(self, x: Mapping[str, float], current: int | None, hysteresis: float) -> int:
        """Nearest segment, but stay in `current` unless the new one is clearly
        nearer (by the hysteresis share): no flip-flopping at the borders."""
        d = self.distances(x)
        best = d.index(min(d))
        stays = current is not None and 0 <= current < len(d) and best != current
        if stays and current is not None and d[best] >= (1.0 - hysteresis) * d[current]:
            return current
        return best

    def rfm(self, recency_days: float, frequency: float, monetary: float) -> tuple[int, int, int]:
        r = 6 - _quintile(recency_days, self.rfm_cuts.get("recency", ()))
        return (
            max(1, min(5, r)),
            _quintile(frequency, self.rfm_cuts.get("frequency", ())),
            _quintile(monetary, self.rfm_cuts.get("monetary", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "keys": list(self.keys),
            "mean": list(self.mean),
            "std": list(self.std),
            "centers": [list(c) for c in self.centers],
            "personas": [p.__dict__ for p in self.personas],
            "rfm_cuts": {k: list(v) for k, v in self.rfm_cuts.items()},
            "created_ms": self.created_ms,
            "sample_cutoff": self.sample_cutoff,
        }

    def feeds_learner(self, customer_id: str) -> bool:
        """Whether this customer's vectors can still matter to the learner."""
        return self.sample_cutoff is None or customer_hash(customer_id) <= self.sample_cutoff

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FrozenModel:
        return cls(
            version=int(doc["version"]),
            keys=tuple(doc["keys"]),
            mean=tuple(doc["mean"]),
            std=tuple(doc["std"]),
            centers=tuple(tuple(c) for c in doc["centers"]),
            personas=tuple(
                Persona(p["label"], p["description"], p["size"], p.get("figures", {}))
                for p in doc["personas"]
            ),
            rfm_cuts={k: tuple(v) for k, v in doc["rfm_cuts"].items()},
            created_ms=int(doc["created_ms"]),
            sample_cutoff=doc.get("sample_cutoff"),
        )


def match_ids(
    previous: FrozenModel | None, centers_raw: Sequence[Sequence[float]], std: Sequence[float]
) -> list[int]:
    """order[i] = index of the new centre that takes segment id i."""
    k = len(centers_raw)
    if previous is None or len(previous.centers) != k:
        return list(range(k))
    prev_raw = [
        [c * s + m for c, s, m in zip(center, previous.std, previous.mean, strict=True)]
        for center in previous.centers
    ]
    cost = [
        [
            math.sqrt(sum(((a - b) / s) ** 2 for a, b, s in zip(p, n, std, strict=True)))
            for n in centers_raw
        ]
        for p in prev_raw
    ]
    rows, cols = linear_sum_assignment(cost)
    order = [0] * k
    for row, col in zip(rows, cols, strict=True):
        order[int(row)] = int(col)
    return order


CHECKPOINT_FORMAT = "patronage.segment-trainer"
CHECKPOINT_VERSION = 3  # 3: RFM inputs per sampled customer, no P² markers
# A restart must beat the warm-started refit by this much to replace it:
# small gains are not worth moving customers between segments.
RESTART_GAIN = 0.03
RFM_DIMENSIONS = ("recency", "frequency", "monetary")
RFM_QUINTILES = (0.2, 0.4, 0.6, 0.8)
# Standardised values are clipped here: a handful of extreme customers (a
# reseller's baskets, a bot's clicks) must not take a segment of their own.
CLIP = 3.0


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class Fit:
    """A refit on the sample, its centres already matched to the previous ids."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    centers: tuple[tuple[float, ...], ...]  # standardised
    sizes: tuple[int, ...]
    categories: tuple[Counter[str], ...]
    medians: dict[str, float]  # population medians of the figures (relative label rules)
    shift: float  # largest centre move since the previous version, in std units (inf: none)
    inertia: float


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass
class SegmentTrainer:
    """The single learner: a customer sample, k-means refits, RFM quintiles."""

    n_clusters: int = 5
    warmup: int = 500  # customers sampled before the first model
    seed: int = 42
    sample_size: int = 10_000
    restarts: int = 10
    # ... and the longest-active of them active for this many days: a model
    # learnt on a young population would be re-learnt as it matures,
    # re-labelling customers who did not change.
    warmup_days: float = 90.0
    version: int = 0
    updates: int = 0
    sample: CustomerSample = field(init=False)
    previous: FrozenModel | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.n_clusters <= 12:
            raise ValueError(f"n_clusters must be 2..12, got {self.n_clusters}")
        self.sample = CustomerSample(self.sample_size)

    def learn(
        self,
        customer_id: str,
        x: Mapping[str, float],
        top_category: str | None = None,
        rfm: Sequence[float] | None = None,
    ) -> None:
        vector = [float(x.get(k, UNDEFINED)) for k in FEATURES]
        self.sample.add(customer_id, vector, top_category, rfm)
        self.updates += 1

    def fit(self) -> Fit | None:
        """k-means on the standardised sample; None before the warm-up."""
        k = self.n_clusters
        if len(self.sample) < max(self.warmup, k):
            return None
        ids = self.sample.ordered()
        raw = np.array([self.sample.vectors[c] for c in ids], dtype=float)
        span_days = float(np.expm1(raw[:, FEATURES.index("tenure_log_days")].max()))
        if self.previous is None and span_days < self.warmup_days:
            return None
        mean, std = defined_mean_std(raw)
        z = np.nan_to_num(np.clip((raw - mean) / std, -CLIP, CLIP))  # undefined: the mean
        rng = random.Random(f"{self.seed}:{self.version}")
        best = min(
            (kmeans(z, kmeans_plus_plus(z, k, rng)) for _ in range(max(1, self.restarts))),
            key=lambda fit: fit[2],
        )
        previous = self.previous if self._continues(self.previous) else None
        if previous is not None:
            prev_raw = np.array(previous.centers) * np.array(previous.std) + previous.mean
            warm = kmeans(z, (prev_raw - mean) / std)
            if warm[2] <= best[2] * (1 + RESTART_GAIN):
                best = warm
        centers, labels, inertia = best
        order = match_ids(previous, (centers * std + mean).tolist(), std.tolist())
        new_id = {old: new for new, old in enumerate(order)}
        centers = centers[order]
        labels = np.array([new_id[int(label)] for label in labels])
        categories: tuple[Counter[str], ...] = tuple(Counter() for _ in range(k))
        for customer_id, label in zip(ids, labels.tolist(), strict=True):
            if customer_id in self.sample.categories:
                categories[label][self.sample.categories[customer_id]] += 1
        shift = math.inf
        if previous is not None:
            prev_raw = np.array(previous.centers) * np.array(previous.std) + previous.mean
            moved = (centers * std + mean - prev_raw) / std
            shift = float(np.sqrt((moved**2).sum(axis=1)).max())
        return Fit(
            mean=tuple(mean.tolist()),
            std=tuple(std.tolist()),
            centers=tuple(tuple(c) for c in centers.tolist()),
            sizes=tuple(int((labels == i).sum()) for i in range(k)),
            categories=categories,
            medians={name: defined_median(values) for name, values in figure_columns(raw).items()},
            shift=shift,
            inertia=inertia,
        )

    def _continues(self, model: FrozenModel | None) -> bool:
        return (
            model is not None and model.keys == FEATURES and len(model.centers) == self.n_clusters
        )

    def freeze(self, now_ms: int, fit: Fit | None = None) -> FrozenModel | None:
        """The next model version from a fit (made now when not given)."""
        fit = fit or self.fit()
        if fit is None:
            return None
        self.version += 1
        personas = tuple(
            describe(
                fit.centers[i], fit.mean, fit.std, fit.sizes[i], fit.categories[i], fit.medians
            )
            for i in range(len(fit.centers))
        )
        model = FrozenModel(
            version=self.version,
            keys=FEATURES,
            mean=fit.mean,
            std=fit.std,
            centers=fit.centers,
            personas=personas,
            rfm_cuts=(
                self.sample.rfm_cuts()
                if self.sample.rfm or self.previous is None
                else self.previous.rfm_cuts
            ),
            created_ms=now_ms,
            sample_cutoff=self.sample.cutoff(),
        )
        self.previous = model
        return model

    def adopt(self, model: FrozenModel) -> None:
        """Take the next version as frozen from this trainer's sample
        elsewhere (refit_with_checkpoint), as freeze() would have made it."""
        if model.version != self.version + 1:
            raise ValueError(f"version {model.version} does not follow {self.version}")
        self.version = model.version
        self.previous = model

    def to_checkpoint(self) -> dict[str, Any]:
        """The learner's whole state as versioned JSON (never pickle: a
        checkpoint read from Redis must not be able to run code)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "n_clusters": self.n_clusters,
            "warmup": self.warmup,
            "seed": self.seed,
            "sample_size": self.sample_size,
            "restarts": self.restarts,
            "warmup_days": self.warmup_days,
            "model_version": self.version,
            "updates": self.updates,
            "sample": self.sample.state(),
            "previous": self.previous.to_json() if self.previous else None,
        }

    @classmethod
    def from_checkpoint(cls, doc: Mapping[str, Any]) -> SegmentTrainer:
        # Version 2 (P² markers instead of per-customer RFM inputs) is read
        # without its markers: the cuts stay the promoted model's until the
        # sampled customers' next updates bring their RFM inputs.
        if doc.get("format") != CHECKPOINT_FORMAT or doc.get("version") not in (
            2,
            CHECKPOINT_VERSION,
        ):
            raise ValueError(
                f"not a version {CHECKPOINT_VERSION} segment-trainer checkpoint: "
                f"{doc.get('format')!r} v{doc.get('version')!r}"
            )
        trainer = cls(
            doc["n_clusters"],
            doc["warmup"],
            doc["seed"],
            doc["sample_size"],
            doc["restarts"],
            doc["warmup_days"],
        )
        trainer.version = doc["model_version"]
        trainer.updates = doc["updates"]
        trainer.sample = CustomerSample.from_state(doc["sample"])
        previous = doc["previous"]
        trainer.previous = FrozenModel.from_json(previous) if previous else None
        return trainer


def checkpoint_text(trainer: SegmentTrainer) -> str:
    """The checkpoint as JSON, an undefined feature (NaN, which JSON lacks)
    as null. orjson: 10,000 sampled vectors took the standard library ~60 ms
    of every refit (about half of the fit process's time per promotion, on
    the cores ingest uses) and take ~4 ms (benchmarks/bench_refit.py)."""
    return orjson.dumps(trainer.to_checkpoint()).decode()


def read_checkpoint(raw: str | bytes) -> SegmentTrainer:
    """A trainer from checkpoint_text; ValueError (or KeyError, TypeError) if
    it is not a checkpoint this version reads. Those written by earlier
    versions spell undefined features NaN: the standard library reads them."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a segment-trainer checkpoint: not a JSON object")
    return SegmentTrainer.from_checkpoint(doc)


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class Refit:
    """What the fit process returns: the fit, the trainer's next version
    frozen from it, and the checkpoint the trainer has once it adopts that
    version (SegmentTrainer.adopt)."""

    fit: Fit
    model: FrozenModel
    checkpoint: str


def refit_with_checkpoint(trainer: SegmentTrainer, now_ms: int) -> Refit | None:
    """A refit, the version it freezes into at `now_ms` and the checkpoint —
    made where the refit runs (the worker's fit process): on the event loop,
    serialising 10,000 sampled vectors stalled ingest ~50 ms and freezing
    (RFM cuts, personas) a few more at every promotion."""
    fit = trainer.fit()
    if fit is None:
        return None
    # freeze() only rebinds the version and the previous model (it reads the
    # sample), so a shallow copy leaves the caller's trainer as it was — in a
    # thread that is the learner's own. A deep copy was a third of the refit.
    frozen = copy.copy(trainer)
    model = frozen.freeze(now_ms, fit)
    assert model is not None
    return Refit(fit, model, checkpoint_text(frozen))


def figure_columns(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Feature columns (rows = customers or centres) in the units people read."""
    col = {name: raw[:, i] for i, name in enumerate(FEATURES)}
    return {
        "orders_30d": np.expm1(col["frequency_log"]),
        "spend_30d": np.expm1(col["monetary_log"]),
        "avg_basket": np.expm1(col["avg_basket_log"]),
        "days_between_visits": np.expm1(col["visit_gap_log_days"]),
        "online_share": col["online_share"],
        "clicks_per_order": np.expm1(col["browse_to_buy_log"]),
        "return_rate": col["return_rate"],
        "active_days": np.expm1(col["tenure_log_days"]),
    }


# The rules a label term needs the centroid's figures to meet (shown on /segments).
LABEL_RULES = {
    "browsing, no orders": "fewer than 0.05 orders per 30 days (no channel or basket term then)",
    "in-store": "at least 70 % of orders in store",
    "online": "at least 70 % of orders online",
    "omnichannel": "between the two",
    "weekly": "visits every 9 days or more often",
    "fortnightly": "visits every 9 to 20 days",
    "monthly": "visits every 20 to 45 days",
    "one-off or new": "active on 7 days or fewer in all",
    "big-basket": "average basket at least 1.5x the median customer's",
    "small-basket": "average basket at most 0.5x the median customer's",
    "high-spend": "spend per 30 days at least 2x the median customer's",
    "browse-heavy": "at least 10 clicks per order",
    "returns a lot": "returns at least 15 % of what they buy",
    "mostly <category>": "the top category of at least 40 % of its customers",
}


def label_terms(figures: Mapping[str, float], medians: Mapping[str, float]) -> list[str]:
    """Label terms whose rule (LABEL_RULES) the figures meet."""
    terms: list[str] = []
    share = figures["online_share"]
    buys = figures["orders_30d"] >= 0.05
    if not buys:
        terms.append("browsing, no orders")
    else:
        terms.append("online" if share >= 0.7 else "in-store" if share <= 0.3 else "omnichannel")
    gap = figures["days_between_visits"]
    if figures["active_days"] <= 7:
        terms.append("one-off or new")
    elif gap <= 9:
        terms.append("weekly")
    elif gap <= 20:
        terms.append("fortnightly")
    elif gap <= 45:
        terms.append("monthly")
    basket, median_basket = figures["avg_basket"], medians.get("avg_basket", 0.0)
    if buys and median_basket > 0 and basket >= 1.5 * median_basket:
        terms.append("big-basket")
    elif buys and median_basket > 0 and basket <= 0.5 * median_basket:
        terms.append("small-basket")
    median_spend = medians.get("spend_30d", 0.0)
    if median_spend > 0 and figures["spend_30d"] >= 2 * median_spend:
        terms.append("high-spend")
    if figures["clicks_per_order"] >= 10:
        terms.append("browse-heavy")
    if figures["return_rate"] >= 0.15:
        terms.append("returns a lot")
    return terms


def describe(
    center: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    size: int,
    categories: Counter[str],
    medians: Mapping[str, float],
) -> Persona:
    """A persona whose label says only what its centroid's figures support."""
    raw = np.array([[c * s + m for c, s, m in zip(center, std, mean, strict=True)]])
    figures = {name: round(float(v[0]), 3) for name, v in figure_columns(raw).items()}
    terms = label_terms(figures, medians)
    if categories and size:
        top, count = categories.most_common(1)[0]
        if count >= 0.4 * size:
            terms.append(f"mostly {top.replace('_', ' ')}")
            figures["top_category_share"] = round(count / size, 3)
    label = ", ".join(terms)
    description = (
        f"{label}: {size} sampled customers; typically {figures['orders_30d']:.1f} orders and "
        f"{figures['spend_30d']:.0f} spent per 30 days, basket {figures['avg_basket']:.0f}, "
        f"a visit every {figures['days_between_visits']:.0f} days, "
        f"{figures['online_share']:.0%} of orders online"
    )
    return Persona(label=label, description=description, size=size, figures=figures)


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class SegmentDecision:
    segment: int
    previous: int | None
    reason: str  # "profile" or "model_update"; "" when only the RFM scores changed
    rfm: tuple[int, int, int]
    changed: bool


def decide(
    fields: Mapping[str, float | str],
    x: Mapping[str, float],
    model: FrozenModel,
    scored_by: FrozenModel | None,
    hysteresis: float,
    rfm_now: Sequence[float] = (0.0, 0.0, 0.0),
) -> SegmentDecision | None:
    """Score one profile; None when nothing stored would change. `rfm_now`:
    recency days, frequency and monetary value at the scoring time.
    A profile whose segment and RFM scores stand is not rewritten to record
    the newer model: the re-scoring pass records that it judged a whole
    partition instead (`judged_version`).

    A move counts as `model_update` when the model that last judged the
    customer would keep them where they are on these same features: the
    model moved, not the customer."""
    current = int(float(fields["segment"])) if "segment" in fields else None
    new = model.assign(x, current, hysteresis)
    rfm = model.rfm(*rfm_now)
    stored_rfm = tuple(int(float(fields.get(f"rfm_{d}", 0))) for d in "rfm")
    if new == current:
        if rfm == stored_rfm:
            return None
        return SegmentDecision(new, current, "", rfm, False)
    reason = "profile"
    if (
        current is not None
        and scored_by is not None
        and scored_by.version != model.version
        and scored_by.assign(x, current, hysteresis) == current
    ):
        reason = "model_update"
    return SegmentDecision(new, current, reason, rfm, True)


def judged_floor_of(passes: Mapping[int, int], partitions: int) -> int:
    """The model version every partition's re-scoring pass has completed
    with (0 until each has one): every profile has been judged by it or a
    newer one. A partition past `partitions` that has a pass recorded counts
    too (input topics made with more partitions than the setting says)."""
    count = max([partitions, *(p + 1 for p in passes)])
    return min((passes.get(p, 0) for p in range(count)), default=0)
