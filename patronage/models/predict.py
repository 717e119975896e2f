"""Will they buy again, and what are they worth: the buy-till-you-die models.

* BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"):
  while alive, a customer buys at a Poisson rate λ ~ Gamma(r, alpha); after each
  purchase they drop out with probability p ~ Beta(a, b).
* Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV"): the value of a
  customer's transactions varies around their own mean, nu ~ Gamma(q, gamma),
  spend | nu ~ Gamma(p, nu); independent of the purchase process.

Inputs per customer, in weeks as in the papers: `x` repeat purchases (order
days after the first), `t_x` the time of the last purchase and `T` the age,
both since the first purchase; `zbar` the mean value of the repeat purchases.
Pure functions, closed forms (the Gaussian hypergeometric 2F1 from scipy),
fitted by maximum likelihood on the closed-form log-likelihoods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from mypy_extensions import mypyc_attr
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float


def bgnbd_log_likelihood(
    params: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Each customer's log-likelihood (FHL 2005, eq. 6)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    ln_a1 = gammaln(r + x) + r * math.log(alpha) - gammaln(r)
    ln_a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    ln_a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_a4 = np.where(
            x > 0,
            math.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    out: np.ndarray = ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4)
    return out


def p_alive(params: BGNBD, x: float, t_x: float, T: float) -> float:
    """P(still a customer | x, t_x, T) (FHL 2005, eq. 13)."""
    if x == 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if b + x - 1 <= 0:
        return 0.0  # b -> 0: every repeat purchase is followed by dropping out
    log_odds = math.log(a / (b + x - 1)) + (r + x) * math.log((alpha + T) / (alpha + t_x))
    return 1.0 / (1.0 + math.exp(log_odds)) if log_odds < 700 else 0.0


def expected_purchases(params: BGNBD, t: float, x: float, t_x: float, T: float) -> float:
    """E[purchases in the next t weeks | x, t_x, T] (FHL 2005, eq. 10)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if t <= 0:
        return 0.0
    z = t / (alpha + T + t)
    shape = math.exp((r + x) * math.log((alpha + T) / (alpha + T + t)))
    body = (a + b + x - 1) / (a - 1) * (1 - shape * hyp2f1(r + x, b + x, a + b + x - 1, z))
    return float(body * p_alive(params, x, t_x, T))


def expected_purchases_new(params: BGNBD, t: float) -> float:
    """E[purchases by a customer in their first t weeks after the first] (FHL 2005, eq. 9)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if t <= 0:
        return 0.0
    shape = (alpha / (alpha + t)) ** r
    return float((a + b - 1) / (a - 1) * (1 - shape * hyp2f1(r, b, a + b - 1, t / (alpha + t))))


def fit_bgnbd(x: Sequence[float], t_x: Sequence[float], T: Sequence[float]) -> BGNBD:
    """Maximum-likelihood r, alpha, a, b (optimised on their logarithms)."""
    xs, txs, Ts = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    scale = float(Ts.max()) or 1.0  # fit on a unit time scale, report in the data's units

    def loss(log_params: np.ndarray) -> float:
        r, alpha, a, b = np.exp(log_params)
        params = BGNBD(r, alpha, a, b)
        value = -float(bgnbd_log_likelihood(params, xs, txs / scale, Ts / scale).sum())
        return value if math.isfinite(value) else 1e300

    best = minimize(loss, np.zeros(4), method="Nelder-Mead", options=_PRECISE)
    best = minimize(loss, best.x, method="Nelder-Mead", options=_PRECISE)  # restart: polish
    r, alpha, a, b = np.exp(best.x)
    return BGNBD(float(r), float(alpha * scale), float(a), float(b))


def gamma_gamma_log_likelihood(params: GammaGamma, x: np.ndarray, zbar: np.ndarray) -> np.ndarray:
    """Each repeat customer's log-likelihood of their mean spend (FHL "RFM and CLV")."""
    p, q, g = params.p, params.q, params.gamma
    out: np.ndarray = (
        gammaln(p * x + q)
        - gammaln(p * x)
        - gammaln(q)
        + q * math.log(g)
        + (p * x - 1) * np.log(zbar)
        + p * x * np.log(x)
        - (p * x + q) * np.log(g + x * zbar)
    )
    return out


def fit_gamma_gamma(x: Sequence[float], zbar: Sequence[float]) -> GammaGamma:
    """Maximum-likelihood p, q, gamma on the customers with repeat purchases."""
    xs, zs = np.asarray(x, dtype=float), np.asarray(zbar, dtype=float)
    keep = (xs > 0) & (zs > 0)
    xs, zs = xs[keep], zs[keep]

    def loss(log_params: np.ndarray) -> float:
        p, q, g = np.exp(log_params)
        value = -float(gamma_gamma_log_likelihood(GammaGamma(p, q, g), xs, zs).sum())
        return value if math.isfinite(value) else 1e300

    start = np.log([1.0, 1.0, float(np.mean(zs))])
    best = minimize(loss, start, method="Nelder-Mead", options=_PRECISE)
    best = minimize(loss, best.x, method="Nelder-Mead", options=_PRECISE)
    p, q, g = np.exp(best.x)
    return GammaGamma(float(p), float(q), float(g))


def expected_order_value(params: GammaGamma, x: float, zbar: float) -> float:
    """E[value of an order | x repeat orders with mean value zbar]; the
    population mean when x = 0 (needs q > 1)."""
    p, q, g = params.p, params.q, params.gamma
    if x <= 0:
        return p * g / (q - 1)
    return (g + x * zbar) * p / (p * x + q - 1)


def clv(
    purchases: BGNBD,
    spend: GammaGamma,
    x: float,
    t_x: float,
    T: float,
    zbar: float,
    weeks: float = 52.0,
    annual_discount: float = 0.1,
    weeks_per_step: float = 52 / 12,
) -> float:
    """Predicted value over the next `weeks`: expected purchases per step
    (monthly by default) times the expected order value, discounted per step."""

    def one(v: float) -> np.ndarray:
        return np.array([v], dtype=float)

    values = clv_many(
        purchases,
        spend,
        one(x),
        one(t_x),
        one(T),
        one(zbar),
        weeks,
        annual_discount,
        weeks_per_step,
    )
    return float(values[0])


def clv_many(
    purchases: BGNBD,
    spend: GammaGamma,
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    zbar: np.ndarray,
    weeks: float = 52.0,
    annual_discount: float = 0.1,
    weeks_per_step: float = 52 / 12,
) -> np.ndarray:
    """`clv` for arrays of customers: scoring a batch costs one 2F1 call per
    step for the whole batch, not per customer."""
    r, alpha, a, b = purchases.r, purchases.alpha, purchases.a, purchases.b
    p, q, g = spend.p, spend.q, spend.gamma
    repeat = x > 0
    safe_x = np.where(repeat, x, 1.0)
    value = np.where(repeat, (g + x * zbar) * p / (p * safe_x + q - 1), p * g / (q - 1))
    alive = p_alive_many(purchases, x, t_x, T)
    step_rate = (1 + annual_discount) ** (weeks_per_step / 52) - 1
    # Every step at once, customers x steps: a batch's fixed cost was a dozen
    # array operations per step (~150 us; docs/benchmarks.md). The same
    # operations per element in the same order as one step at a time, and
    # cumsum adds the steps in order, so each value is what the loop gave.
    steps = np.arange(1, math.ceil(weeks / weeks_per_step) + 1)
    if not len(steps):
        return np.zeros_like(x, dtype=float)
    t = np.minimum(weeks, steps * weeks_per_step)
    start = (alpha + T)[:, None]
    z = t / (start + t)
    shape = np.exp((r + x)[:, None] * np.log(start / (start + t)))
    later = (a + b + x - 1)[:, None]
    body = later / (a - 1) * (1 - shape * hyp2f1((r + x)[:, None], (b + x)[:, None], later, z))
    cumulative = body * alive[:, None]
    # Python's pow, as the loop had: numpy's vectorised one differs in the last bit.
    discount = np.array([(1 + step_rate) ** int(step) for step in steps])
    per_step = np.diff(cumulative, axis=1, prepend=0.0) * value[:, None] / discount
    out: np.ndarray = np.cumsum(per_step, axis=1)[:, -1]
    return out


def p_alive_many(params: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """`p_alive` for arrays."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_odds = np.log(a / (b + x - 1)) + (r + x) * np.log((alpha + T) / (alpha + t_x))
        alive = np.where(log_odds < 700, 1.0 / (1.0 + np.exp(np.minimum(log_odds, 700))), 0.0)
    out: np.ndarray = np.where(x == 0, 1.0, np.where(b + x - 1 <= 0, 0.0, alive))
    return out


def at_risk_age(params: BGNBD, x: float, t_x: float, threshold: float) -> float | None:
    """The age T (weeks since the first purchase) at which p_alive falls to
    `threshold` if no purchase comes; None when it never does. From eq. 13:
    p_alive < theta  <=>  a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x) > 1/theta - 1.
    Under BG/NBD a customer drops out only right after a purchase, so a
    one-time buyer (x = 0) is alive for sure and never at risk."""
    if x <= 0 or not 0 < threshold < 1:
        return None
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if b + x - 1 <= 0:
        return t_x
    ratio = float(((1 / threshold - 1) * (b + x - 1) / a) ** (1 / (r + x)))
    # Below 1: p_alive is under the threshold right at the last purchase.
    return max(t_x, (alpha + t_x) * ratio - alpha)


# Fits that converge take ~1,000 evaluations (the CDNOW sample: 1,026 and 500,
# polished in 289 and 237). Where the data do not identify a model (spends
# with no spread between customers, nobody dropping out) the likelihood is a
# flat ridge: the simplex walks along it until `maxfev`, which at 40,000 per
# run took 2.6 s of the fit process for 400 customers and reached a point no
# likelier than where it stood after a few thousand.
_PRECISE = {"xatol": 1e-10, "fatol": 1e-10, "maxiter": 2_000, "maxfev": 4_000}


WEEK_MS = 7 * 86_400_000
MIN_CUSTOMERS = 100  # fewer buyers than this: no parameters, predictions absent


@mypyc_attr(native_class=False)  # pickled, read as __dict__: see patronage/compiled.py
@dataclass(frozen=True)
class FittedParameters:
    """A version of the population parameters every worker predicts with."""

    version: int
    purchases: BGNBD
    spend: GammaGamma
    customers: int  # buyers the fit saw
    fitted_ms: int
    # predicted 365-day CLV at the 20th and 80th percentile of those buyers:
    # below the first is `low_value`, from the second up `best`
    clv_cuts: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "bgnbd": self.purchases.__dict__,
            "gamma_gamma": self.spend.__dict__,
            "customers": self.customers,
            "fitted_ms": self.fitted_ms,
            "clv_cuts": list(self.clv_cuts),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> FittedParameters:
        return cls(
            version=int(doc["version"]),  # type: ignore[call-overload]
            purchases=BGNBD(**doc["bgnbd"]),  # type: ignore[arg-type]
            spend=GammaGamma(**doc["gamma_gamma"]),  # type: ignore[arg-type]
            customers=int(doc["customers"]),  # type: ignore[call-overload]
            fitted_ms=int(doc["fitted_ms"]),  # type: ignore[call-overload]
            clv_cuts=tuple(doc.get("clv_cuts", (0.0, 0.0))),  # type: ignore[arg-type]
        )


HISTORY_FIELDS = ("first_order_at", "last_order_at", "orders", "basket_sum", "first_order_value")


def history_record(fields: Mapping[str, float | str]) -> list[float] | None:
    """The fields purchase_history needs, as numbers (what the learner keeps)."""
    if "first_order_at" not in fields:
        return None
    return [float(fields.get(name, 0.0)) for name in HISTORY_FIELDS]


def purchase_history(
    fields: Mapping[str, float | str], now_ms: float
) -> tuple[float, float, float, float] | None:
    """(x, t_x, T, zbar) of a profile, in weeks since its first order; None
    before the first order. x counts the orders after the first."""
    if "first_order_at" not in fields:
        return None

    def num(name: str, default: float = 0.0) -> float:
        return float(fields.get(name, default))

    first = num("first_order_at")
    x = max(0.0, num("orders") - 1)
    t_x = max(0.0, num("last_order_at", first) - first) / WEEK_MS
    age = max(t_x, (now_ms - first) / WEEK_MS)
    repeat_value = num("basket_sum") - num("first_order_value")
    zbar = repeat_value / x if x > 0 else 0.0
    return x, t_x, age, zbar


def predictions(
    fields: dict[str, float | str],
    now_ms: float,
    fitted: FittedParameters | None,
    annual_discount: float = 0.1,
) -> dict[str, object]:
    """What the profile view shows: the predictions at `now_ms`, or why not."""
    if fitted is None:
        return {"available": False, "reason": "no fitted parameters yet (see docs/predictions.md)"}
    history = purchase_history(fields, now_ms)
    if history is None:
        return {"available": False, "reason": "no order yet", "parameters_version": fitted.version}
    x, t_x, age, zbar = history
    bg, gg = fitted.purchases, fitted.spend
    alive = p_alive(bg, x, t_x, age)
    rate_per_week = (bg.r + x) / (bg.alpha + age)
    next_at = now_ms + WEEK_MS / rate_per_week if alive >= 0.5 else None
    value = clv(bg, gg, x, t_x, age, zbar, 365 / 7, annual_discount)
    return {
        "available": True,
        "parameters_version": fitted.version,
        "p_alive": alive,
        "expected_orders_30d": expected_purchases(bg, 30 / 7, x, t_x, age),
        "expected_orders_90d": expected_purchases(bg, 90 / 7, x, t_x, age),
        "expected_next_order_at": next_at,
        "expected_avg_order_value": expected_order_value(gg, x, zbar),
        "predicted_clv_365d": value,
        "value_tier": value_tier(value, fitted.clv_cuts),
    }


Tier = Literal["best", "regular", "low_value"]


def value_tier(clv: float, cuts: tuple[float, float]) -> Tier:
    """`best` from the upper cut, `low_value` up to the lower one."""
    low, best = cuts
    return "best" if clv >= best else "low_value" if clv <= low else "regular"


def fit_population(
    histories: Sequence[tuple[float, float, float, float]],
    version: int,
    now_ms: int,
    previous: FittedParameters | None = None,
) -> FittedParameters | str:
    """Fit both models on (x, t_x, T, zbar) of the buyers; a reason when it
    cannot, or when the fit is not better than `previous` on the same data."""
    if len(histories) < MIN_CUSTOMERS:
        return f"{len(histories)} customers with an order; at least {MIN_CUSTOMERS} are needed"
    x, t_x, T, zbar = (list(column) for column in zip(*histories, strict=True))
    if sum(1 for v in x if v > 0) < MIN_CUSTOMERS // 4:
        return "too few repeat buyers to fit the spend model"
    purchases = fit_bgnbd(x, t_x, T)
    spend = fit_gamma_gamma(x, zbar)
    if min(purchases.__dict__.values()) < 1e-6 or abs(purchases.a - 1) < 1e-6:
        return f"purchase model degenerate ({purchases}): the data does not identify it"
    if spend.q <= 1:
        return f"spend model not usable (q = {spend.q:.3f} <= 1: the mean order value diverges)"
    if previous is not None:
        data = (np.asarray(x), np.asarray(t_x), np.asarray(T))
        new = float(bgnbd_log_likelihood(purchases, *data).sum())
        old = float(bgnbd_log_likelihood(previous.purchases, *data).sum())
        if not math.isfinite(new) or new < old - 1e-6 * abs(old):
            return (
                f"the fit (log-likelihood {new:.1f}) is worse than "
                f"version {previous.version}'s ({old:.1f}) on the same customers"
            )
    values = sorted(clv(purchases, spend, *h, weeks=365 / 7) for h in histories)
    if not all(math.isfinite(v) for v in values):
        return "predictions from this fit are not finite for every customer"
    cuts = (values[len(values) // 5], values[len(values) * 4 // 5])
    return FittedParameters(version, purchases, spend, len(histories), now_ms, cuts)
