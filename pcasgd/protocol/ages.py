"""How old a neighbour's snapshot is, in steps (ALGORITHMS.md, "Revision: staleness under real
asynchrony"), and the step period a publisher reports with each snapshot.

A snapshot carries its publish time ``t_pub`` and the publisher's recent mean step period ``T_j``.
A reader at time ``t`` whose own period is ``T_i`` sees the neighbour-step age
``a = (t - t_pub) / T_j`` (how many steps the neighbour has probably taken since) and the own-step
age ``b = (t - t_pub) / T_i``. Time is the simulator's (and ``--deterministic``'s) simulated time,
or wall time with every rank's clock set to rank 0's; the engines supply it, the arithmetic here
is the same for both.
"""

from __future__ import annotations

import math
from collections import Counter, deque

#: Width of the bins of age histograms (in steps).
AGE_BIN = 0.25


def snapshot_ages(now: float, published: float, period: float, own_period: float) -> tuple[float, float]:
    """``(a, b)``: the snapshot's age in the publisher's steps and in the reader's own steps.

    A snapshot stamped later than ``now`` (clocks of different hosts, set equal only to the
    precision of their offset measurement) is 0 steps old.
    """
    elapsed = max(0.0, now - published)
    return elapsed / period, elapsed / own_period


class StepPeriod:
    """The mean of an agent's last ``window`` step durations (its ``T_i``)."""

    def __init__(self, window: int = 8) -> None:
        self._durations: deque[float] = deque(maxlen=window)

    def add(self, duration: float) -> None:
        if duration > 0:  # two publishes within the clock's resolution say nothing of the period
            self._durations.append(duration)

    @property
    def period(self) -> float:
        """The mean of the durations added (1.0 before any: the unit step of simulated time)."""
        return sum(self._durations) / len(self._durations) if self._durations else 1.0


def age_bin(age: float) -> float:
    """The lower edge of ``age``'s histogram bin."""
    return math.floor(age / AGE_BIN) * AGE_BIN


def histogram_median(histogram: Counter[float]) -> float | None:
    """The upper edge of the bin that holds the median of a binned histogram (None when empty):
    the median is below it."""
    total = sum(histogram.values())
    if not total:
        return None
    seen, edge = 0, 0.0
    for edge in sorted(histogram):
        seen += histogram[edge]
        if 2 * seen >= total:
            break
    return edge + AGE_BIN
