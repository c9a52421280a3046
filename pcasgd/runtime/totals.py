"""The running totals a decentralized rank publishes in its window header, from which the
recording rank makes an asynchronous run's records without stopping anyone.

A record covers what every rank did since the previous one: the difference of two readings of
each rank's totals. Means come from sums and counts; histograms (staleness, ages, prediction
ratios) travel as fixed bins, whose last bin counts everything at or above its edge; a record's
maxima are read off its histograms (the upper edge of the highest bin used, and never above the
run's maximum so far).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pcasgd.engine import RATIO_BIN, EpochStats
from pcasgd.protocol.ages import AGE_BIN

SCALARS = (
    "iterations",
    "staleness_sum",
    "staleness_count",
    "staleness_max",
    "loss_sum",
    "loss_count",
    "predict_sum",
    "predict_count",
    "samples",
    "age_sum",
    "age_count",
    "age_max",
)

#: (name, bin width, bins): the histograms' fixed bins; the last is "this edge or more".
HISTOGRAMS = (("staleness", 1.0, 33), ("age", AGE_BIN, 41), ("ratio", RATIO_BIN, 41))

LENGTH = len(SCALARS) + sum(bins for _, _, bins in HISTOGRAMS)

Totals = dict[str, float | np.ndarray]


def _binned(histogram: Counter, width: float, bins: int) -> np.ndarray:
    counts = np.zeros(bins)
    for edge, count in histogram.items():
        counts[min(round(edge / width), bins - 1)] += count
    return counts


def encode(overall: EpochStats, iterations: int, samples: int) -> np.ndarray:
    """The header values of a rank whose run-long statistics are ``overall``."""
    scalars = [
        iterations,
        overall.staleness_sum,
        overall.staleness_count,
        overall.staleness_top,
        overall.loss_sum,
        overall.loss_count,
        overall.predict_share_sum,
        overall.predict_share_count,
        samples,
        overall.age_sum,
        overall.age_count,
        overall.age_top,
    ]
    histograms = (overall.staleness_histogram, overall.age_histogram, overall.prediction_histogram)
    parts = [_binned(h, width, bins) for h, (_, width, bins) in zip(histograms, HISTOGRAMS, strict=True)]
    return np.concatenate([np.array(scalars, dtype=np.float64), *parts])


def decode(values: np.ndarray) -> Totals:
    """The totals a header holds, by name (histograms as arrays of bin counts)."""
    totals: Totals = dict(zip(SCALARS, values[: len(SCALARS)].tolist(), strict=True))
    offset = len(SCALARS)
    for name, _, bins in HISTOGRAMS:
        totals[name] = values[offset : offset + bins].copy()
        offset += bins
    return totals


def _counter(counts: np.ndarray, width: float, integer: bool) -> Counter:
    """The bins as a histogram keyed by their lower edges (as the engines key theirs)."""
    return Counter({(int(i) if integer else round(i * width, 6)): int(counts[i]) for i in np.flatnonzero(counts)})


def _top(counts: np.ndarray, width: float, run_max: float, integer: bool) -> float:
    """The largest value the bins hold: exact for integers below the last bin, else the upper
    edge of the highest bin used; the run's maximum where that is smaller (or for the last bin)."""
    used = np.flatnonzero(counts)
    if not len(used):
        return 0.0
    if used[-1] == len(counts) - 1:
        return run_max
    return float(used[-1]) if integer else min(float(used[-1] + 1) * width, run_max)


def stats_between(now: Totals, before: Totals) -> EpochStats:
    """One rank's statistics between two readings of its totals (``before`` empty: since the start)."""

    def delta(name: str) -> float | np.ndarray:
        return now[name] - before.get(name, 0.0)

    staleness, ages, ratios = (delta(name) for name, _, _ in HISTOGRAMS)
    return EpochStats(
        staleness_sum=delta("staleness_sum"),
        staleness_count=int(delta("staleness_count")),
        staleness_top=int(_top(staleness, 1.0, now["staleness_max"], integer=True)),
        loss_sum=delta("loss_sum"),
        loss_count=int(delta("loss_count")),
        predict_share_sum=delta("predict_sum"),
        predict_share_count=int(delta("predict_count")),
        staleness_histogram=_counter(staleness, 1.0, integer=True),
        age_sum=delta("age_sum"),
        age_count=int(delta("age_count")),
        age_top=_top(ages, AGE_BIN, now["age_max"], integer=False),
        age_histogram=_counter(ages, AGE_BIN, integer=False),
        prediction_histogram=_counter(ratios, RATIO_BIN, integer=False),
    )
