"""BG/NBD on the CDNOW sample: predicted vs actual cumulative repeat
transactions, week by week, through the 39-week holdout (FHL 2005, fig. 2).

    python -m benchmarks.cdnow_tracking [--png docs/predictions-tracking.png]

Parameters are fitted on the 39-week calibration period (the summary that
ships in PyPI `lifetimes`); each customer's expected repeat transactions by
week w come from eq. 9 with their own first-purchase week; the actual ones
are counted from the transaction file (one transaction per customer and day,
as in the papers). Prints a table (every week) and writes the plot.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
from collections import defaultdict
from importlib.metadata import distribution
from pathlib import Path

from patronage.models.predict import expected_purchases_new, fit_bgnbd

START = dt.date(1997, 1, 1)
CALIBRATION_WEEKS = 39
WEEKS = 78


def dataset(name: str) -> Path:
    return Path(str(distribution("lifetimes").locate_file(f"lifetimes/datasets/{name}")))


def tracking() -> tuple[list[float], list[int]]:
    with dataset("cdnow_customers_summary_with_transactions.csv").open(newline="") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    params = fit_bgnbd([r["x"] for r in rows], [r["t_x"] for r in rows], [r["T"] for r in rows])
    days: dict[str, set[dt.date]] = defaultdict(set)
    for line in dataset("CDNOW_sample.txt").read_text().splitlines():
        _, customer, day, _, _ = line.split()
        days[customer].add(dt.date(int(day[:4]), int(day[4:6]), int(day[6:])))
    firsts = [(min(d) - START).days / 7 for d in days.values()]
    repeats = sorted((day - START).days / 7 for d in days.values() for day in sorted(d)[1:])
    predicted, actual = [], []
    for week in range(1, WEEKS + 1):
        predicted.append(sum(expected_purchases_new(params, week - s) for s in firsts if s < week))
        actual.append(sum(1 for r in repeats if r < week))
    return predicted, actual


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cdnow_tracking")
    parser.add_argument("--png", type=Path, default=Path("docs/predictions-tracking.png"))
    args = parser.parse_args()
    predicted, actual = tracking()
    print("| week | actual | predicted | error |")
    print("|---|---|---|---|")
    for week in range(CALIBRATION_WEEKS, WEEKS + 1, 3):
        p, a = predicted[week - 1], actual[week - 1]
        print(f"| {week} | {a:,} | {p:,.0f} | {100 * (p - a) / a:+.1f} % |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = list(range(1, WEEKS + 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(weeks, actual, label="actual")
    ax.plot(weeks, predicted, "--", label="BG/NBD (patronage)")
    ax.axvline(CALIBRATION_WEEKS, color="grey", linewidth=0.8)
    ax.set_xlabel("week since 1997-01-01")
    ax.set_ylabel("cumulative repeat transactions")
    ax.set_title("CDNOW sample: calibration to week 39, holdout to week 78")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
