"""Online segmentation: a converging k-means, frozen versions, stable ids, personas.

* `StableKMeans` is a River `Clusterer`: online standardisation, a k-means++
  start after a warm-up buffer, then each centre moves towards its points
  with step max(1/n, floor) — it converges instead of chasing the last events.
* `SegmentTrainer` (one per deployment) learns, keeps streaming RFM quintiles
  and per-segment category counts, and `freeze()`s a `FrozenModel`: the
  versioned, immutable thing every worker scores with.
* At each freeze the new centres are matched to the previous version's with
  the Hungarian assignment, so segment 3 stays segment 3.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from river import base
from scipy.optimize import linear_sum_assignment

from patronage.models.features import FEATURES


class StableKMeans(base.Clusterer):
    def __init__(
        self,
        n_clusters: int = 5,
        warmup: int = 500,
        step_floor: float = 0.001,
        lloyd_iterations: int = 20,
        restarts: int = 10,
        seed: int | None = None,
    ) -> None:
        if not 2 <= n_clusters <= 12:
            raise ValueError(f"n_clusters must be 2..12, got {n_clusters}")
        self.n_clusters = n_clusters
        self.warmup = warmup
        self.step_floor = step_floor
        self.lloyd_iterations = lloyd_iterations
        self.restarts = restarts
        self.seed = seed
        self._rng = random.Random(seed)
        self.keys: tuple[str, ...] | None = None
        self.n = 0
        self.mean: list[float] = []
        self.m2: list[float] = []
        self.centers: list[list[float]] = []
        self.counts: list[int] = []
        self._buffer: list[list[float]] = []

    # -- scaling (Welford, all points seen) --------------------------------
    def _vector(self, x: Mapping[Hashable, Any]) -> list[float]:
        if self.keys is None:
            self.keys = tuple(sorted(str(k) for k in x))  # sorted: no dict/hash order
        return [float(x.get(k, 0.0)) for k in self.keys]

    def _observe(self, v: list[float]) -> None:
        if not self.mean:
            self.mean = [0.0] * len(v)
            self.m2 = [0.0] * len(v)
        self.n += 1
        for i, value in enumerate(v):
            delta = value - self.mean[i]
            self.mean[i] += delta / self.n
            self.m2[i] += delta * (value - self.mean[i])

    # -- checkpoint (plain JSON values, no pickle) -----------------------------
    def state(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {
            "n_clusters": self.n_clusters,
            "warmup": self.warmup,
            "step_floor": self.step_floor,
            "lloyd_iterations": self.lloyd_iterations,
            "restarts": self.restarts,
            "seed": self.seed,
            "rng": [version, list(internal), gauss],
            "keys": list(self.keys) if self.keys is not None else None,
            "n": self.n,
            "mean": self.mean,
            "m2": self.m2,
            "centers": self.centers,
            "counts": self.counts,
            "buffer": self._buffer,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StableKMeans:
        model = cls(
            state["n_clusters"],
            state["warmup"],
            state["step_floor"],
            state["lloyd_iterations"],
            state["restarts"],
            state["seed"],
        )
        version, internal, gauss = state["rng"]
        model._rng.setstate((version, tuple(internal), gauss))
        model.keys = tuple(state["keys"]) if state["keys"] is not None else None
        model.n = state["n"]
        model.mean = list(state["mean"])
        model.m2 = list(state["m2"])
        model.centers = [list(c) for c in state["centers"]]
        model.counts = list(state["counts"])
        model._buffer = [list(v) for v in state["buffer"]]
        return model

    def std(self) -> list[float]:
        if self.n < 2:
            return [1.0] * len(self.mean)
        return [math.sqrt(m2 / (self.n - 1)) or 1.0 for m2 in self.m2]

    def _scale(self, v: Sequence[float]) -> list[float]:
        if not self.mean:
            return list(v)
        return [(value - m) / s for value, m, s in zip(v, self.mean, self.std(), strict=True)]

    # -- River API -----------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any]) -> None:
        v = self._vector(x)
        self._observe(v)
        if not self.centers:
            self._buffer.append(v)
            if len(self._buffer) >= self.warmup:
                self._initialise()
            return
        z = self._scale(v)
        c = nearest(self.centers, z)
        self.counts[c] += 1
        step = max(1.0 / self.counts[c], self.step_floor)
        center = self.centers[c]
        for i, value in enumerate(z):
            center[i] += step * (value - center[i])

    def predict_one(self, x: dict[Hashable, Any]) -> int:
        if not self.centers:
            return 0
        return nearest(self.centers, self._scale(self._vector(x)))

    def _initialise(self) -> None:
        # Several seeded k-means++ starts on the warm-up buffer; the lowest
        # inertia wins (one start can merge two true groups and split a third).
        points = [self._scale(v) for v in self._buffer]
        best: tuple[float, list[list[float]], list[int]] | None = None
        for _ in range(max(1, self.restarts)):
            centers, counts = self._kmeans(points)
            inertia = sum(min(sq_dist(p, c) for c in centers) for p in points)
            if best is None or inertia < best[0]:
                best = (inertia, centers, counts)
        assert best is not None
        self.centers = best[1]
        self.counts = [max(1, c) for c in best[2]]
        self._buffer = []

    def _kmeans(self, points: list[list[float]]) -> tuple[list[list[float]], list[int]]:
        k = min(self.n_clusters, len(points))
        centers = [list(points[self._rng.randrange(len(points))])]
        while len(centers) < k:  # k-means++: far points are likelier centres
            d2 = [min(sq_dist(p, c) for c in centers) for p in points]
            total = sum(d2)
            if total == 0:
                centers.append(list(points[self._rng.randrange(len(points))]))
                continue
            pick = self._rng.random() * total
            acc = 0.0
            for p, w in zip(points, d2, strict=True):
                acc += w
                if acc >= pick:
                    centers.append(list(p))
                    break
        counts = [0] * k
        for _ in range(self.lloyd_iterations):
            sums = [[0.0] * len(points[0]) for _ in range(k)]
            counts = [0] * k
            for p in points:
                c = nearest(centers, p)
                counts[c] += 1
                for i, value in enumerate(p):
                    sums[c][i] += value
            centers = [
                [s / counts[c] for s in sums[c]] if counts[c] else centers[c] for c in range(k)
            ]
        return centers, counts

    @property
    def ready(self) -> bool:
        return bool(self.centers)


def sq_dist(a: Sequence[float], b: Sequence[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def nearest(centers: Sequence[Sequence[float]], z: Sequence[float]) -> int:
    best, best_d = 0, math.inf
    for i, c in enumerate(centers):
        d = sq_dist(c, z)
        if d < best_d:
            best, best_d = i, d
    return best


# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Persona:
    label: str
    description: str
    size: int
    typical: dict[str, float]


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

    def scale(self, x: Mapping[str, float]) -> list[float]:
        return [
            (float(x.get(k, 0.0)) - m) / s
            for k, m, s in zip(self.keys, self.mean, self.std, strict=True)
        ]

    def distances(self, x: Mapping[str, float]) -> list[float]:
        z = self.scale(x)
        return [math.sqrt(sq_dist(c, z)) for c in self.centers]

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
        def score(value: float, cuts: Sequence[float]) -> int:
            return 1 + sum(1 for c in cuts if value > c)

        r = 6 - score(recency_days, self.rfm_cuts.get("recency", ()))
        return (
            max(1, min(5, r)),
            score(frequency, self.rfm_cuts.get("frequency", ())),
            score(monetary, self.rfm_cuts.get("monetary", ())),
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
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FrozenModel:
        return cls(
            version=int(doc["version"]),
            keys=tuple(doc["keys"]),
            mean=tuple(doc["mean"]),
            std=tuple(doc["std"]),
            centers=tuple(tuple(c) for c in doc["centers"]),
            personas=tuple(Persona(**p) for p in doc["personas"]),
            rfm_cuts={k: tuple(v) for k, v in doc["rfm_cuts"].items()},
            created_ms=int(doc["created_ms"]),
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


class P2Quantile:
    """A streaming quantile in constant memory: the P² algorithm (Jain &
    Chlamtac, 1985), five markers. Its state is five numbers a marker, so a
    checkpoint is plain JSON."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.heights: list[float] = []  # the first five values, then the markers
        self.positions = [0.0, 1.0, 2.0, 3.0, 4.0]
        self.desired = [0.0, 2 * p, 4 * p, 2 + 2 * p, 4.0]
        self.steps = [0.0, p / 2, p, (1 + p) / 2, 1.0]

    def update(self, x: float) -> None:
        q = self.heights
        if len(q) < 5:
            q.append(x)
            q.sort()
            return
        if x < q[0]:
            q[0], k = x, 0
        elif x >= q[4]:
            q[4], k = x, 3
        else:
            k = next(i for i in range(4) if q[i] <= x < q[i + 1])
        n = self.positions
        for i in range(k + 1, 5):
            n[i] += 1
        for i in range(5):
            self.desired[i] += self.steps[i]
        for i in (1, 2, 3):
            d = self.desired[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                step = 1.0 if d > 0 else -1.0
                parabolic = q[i] + step / (n[i + 1] - n[i - 1]) * (
                    (n[i] - n[i - 1] + step) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                    + (n[i + 1] - n[i] - step) * (q[i] - q[i - 1]) / (n[i] - n[i - 1])
                )
                if q[i - 1] < parabolic < q[i + 1]:
                    q[i] = parabolic
                else:
                    j = i + int(step)
                    q[i] = q[i] + step * (q[j] - q[i]) / (n[j] - n[i])
                n[i] += step

    def get(self) -> float | None:
        if not self.heights:
            return None
        if len(self.heights) < 5:
            return self.heights[min(len(self.heights) - 1, int(self.p * len(self.heights)))]
        return self.heights[2]

    def state(self) -> dict[str, Any]:
        return {"p": self.p, "q": self.heights, "n": self.positions, "d": self.desired}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> P2Quantile:
        quantile = cls(state["p"])
        quantile.heights = list(state["q"])
        quantile.positions = list(state["n"])
        quantile.desired = list(state["d"])
        return quantile


CHECKPOINT_FORMAT = "patronage.segment-trainer"
CHECKPOINT_VERSION = 1


@dataclass
class SegmentTrainer:
    """The single learner: online clusterer + RFM quantiles + persona stats."""

    n_clusters: int = 5
    warmup: int = 500
    step_floor: float = 0.001
    seed: int = 42
    version: int = 0
    updates: int = 0
    clusterer: StableKMeans = field(init=False)
    quantiles: dict[str, list[P2Quantile]] = field(init=False)
    categories: list[Counter[str]] = field(init=False)
    previous: FrozenModel | None = None

    def __post_init__(self) -> None:
        self.clusterer = StableKMeans(self.n_clusters, self.warmup, self.step_floor, seed=self.seed)
        self.quantiles = {
            name: [P2Quantile(q) for q in (0.2, 0.4, 0.6, 0.8)]
            for name in ("recency", "frequency", "monetary")
        }
        self.categories = [Counter() for _ in range(self.n_clusters)]

    def learn(self, x: dict[str, float], top_category: str | None = None) -> None:
        sample: dict[Hashable, Any] = {k: v for k, v in x.items()}
        self.clusterer.learn_one(sample)
        self.updates += 1
        for name, value in rfm_values(x).items():
            for q in self.quantiles[name]:
                q.update(value)
        if self.clusterer.ready and top_category:
            self.categories[self.clusterer.predict_one(sample)][top_category] += 1

    def freeze(self, now_ms: int) -> FrozenModel | None:
        km = self.clusterer
        if not km.ready or km.keys is None:
            return None
        std = km.std()
        raw = [
            [c * s + m for c, s, m in zip(center, std, km.mean, strict=True)]
            for center in km.centers
        ]
        order = match_ids(self.previous, raw, std)
        # Reorder the learner itself too, so ids stay put across promotions.
        km.centers = [km.centers[i] for i in order]
        km.counts = [km.counts[i] for i in order]
        self.categories = [self.categories[i] for i in order]
        self.version += 1
        personas = tuple(
            describe(km.keys, km.centers[i], km.mean, std, km.counts[i], self.categories[i])
            for i in range(len(km.centers))
        )
        model = FrozenModel(
            version=self.version,
            keys=km.keys,
            mean=tuple(km.mean),
            std=tuple(std),
            centers=tuple(tuple(c) for c in km.centers),
            personas=personas,
            rfm_cuts={
                name: tuple(float(q.get() or 0.0) for q in qs)
                for name, qs in self.quantiles.items()
            },
            created_ms=now_ms,
        )
        self.previous = model
        return model

    def to_checkpoint(self) -> dict[str, Any]:
        """The learner's whole state as versioned JSON (never pickle: a
        checkpoint read from Redis must not be able to run code)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "n_clusters": self.n_clusters,
            "warmup": self.warmup,
            "step_floor": self.step_floor,
            "seed": self.seed,
            "model_version": self.version,
            "updates": self.updates,
            "clusterer": self.clusterer.state(),
            "quantiles": {n: [q.state() for q in qs] for n, qs in self.quantiles.items()},
            "categories": [dict(c) for c in self.categories],
            "previous": self.previous.to_json() if self.previous else None,
        }

    @classmethod
    def from_checkpoint(cls, doc: Mapping[str, Any]) -> SegmentTrainer:
        if doc.get("format") != CHECKPOINT_FORMAT or doc.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"not a version {CHECKPOINT_VERSION} segment-trainer checkpoint: "
                f"{doc.get('format')!r} v{doc.get('version')!r}"
            )
        trainer = cls(doc["n_clusters"], doc["warmup"], doc["step_floor"], doc["seed"])
        trainer.version = doc["model_version"]
        trainer.updates = doc["updates"]
        trainer.clusterer = StableKMeans.from_state(doc["clusterer"])
        trainer.quantiles = {
            n: [P2Quantile.from_state(q) for q in qs] for n, qs in doc["quantiles"].items()
        }
        trainer.categories = [Counter(c) for c in doc["categories"]]
        previous = doc["previous"]
        trainer.previous = FrozenModel.from_json(previous) if previous else None
        return trainer


def rfm_values(x: Mapping[str, float]) -> dict[str, float]:
    return {
        "recency": math.expm1(x.get("recency_log_days", 0.0)),
        "frequency": math.expm1(x.get("frequency_log", 0.0)),
        "monetary": math.expm1(x.get("monetary_log", 0.0)),
    }


_WORDS = {
    "frequency_log": ("frequent", "occasional"),
    "monetary_log": ("high-spend", "low-spend"),
    "recency_log_days": ("lapsing", "recently active"),
    "avg_basket_log": ("big-basket", "small-basket"),
    "browse_to_buy_log": ("browse-heavy", None),
    "regularity": ("regular", None),
    "return_rate": ("returns a lot", None),
}


def describe(
    keys: Sequence[str],
    center: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    size: int,
    categories: Counter[str],
) -> Persona:
    """A persona from a centre read against the population (centres are in
    standard deviations from the population mean)."""
    z = dict(zip(keys, center, strict=True))
    raw = {k: c * s + m for k, c, s, m in zip(keys, center, std, mean, strict=True)}
    words: list[str] = []
    for name in FEATURES:
        if name not in z or name not in _WORDS:
            continue
        high, low = _WORDS[name]
        if z[name] > 0.5:
            words.append(high)
        elif z[name] < -0.5 and low:
            words.append(low)
    share = raw.get("online_share", 0.5)
    words.append("online" if share > 0.7 else "in-store" if share < 0.3 else "omnichannel")
    if categories:
        words.append(categories.most_common(1)[0][0].replace("_", " "))
    typical = {
        "orders_30d": round(math.expm1(raw.get("frequency_log", 0.0)), 2),
        "spend_30d": round(math.expm1(raw.get("monetary_log", 0.0)), 2),
        "avg_basket": round(math.expm1(raw.get("avg_basket_log", 0.0)), 2),
        "days_since_visit": round(math.expm1(raw.get("recency_log_days", 0.0)), 1),
        "online_share": round(share, 2),
    }
    label = ", ".join(words)
    description = (
        f"{label}: ~{size} customers learned; typically {typical['orders_30d']} orders and "
        f"{typical['spend_30d']:.0f} spent per 30 days, basket {typical['avg_basket']:.0f}, "
        f"last visit {typical['days_since_visit']:.0f} days ago, {share:.0%} of orders online"
    )
    return Persona(label=label, description=description, size=size, typical=typical)


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
) -> SegmentDecision | None:
    """Score one profile; None when nothing stored would change.

    A move counts as `model_update` when the model that last scored the
    customer would keep them where they are on these same features: the
    model moved, not the customer."""
    current = int(float(fields["segment"])) if "segment" in fields else None
    new = model.assign(x, current, hysteresis)
    values = rfm_values(x)
    rfm = model.rfm(values["recency"], values["frequency"], values["monetary"])
    stored_rfm = tuple(int(float(fields.get(f"rfm_{d}", 0))) for d in "rfm")
    if new == current:
        if rfm == stored_rfm and int(float(fields.get("segment_version", 0))) == model.version:
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
