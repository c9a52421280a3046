"""How old a neighbour's snapshot is, in steps, from its stamps (ALGORITHMS.md, "Revision 2"),
and the step period a publisher reports with each snapshot.

A read returns snapshot ``s`` and the newest snapshot the reader considered, ``latest`` (the
owner's newest, or the one a lock-step reader names), with that one's publish time ``t_pub`` and
the publisher's mean step period ``T_j`` then. Read completed at time ``t``, the snapshot is
``a = (latest - s) + min(1, (t - t_pub) / T_j)`` of the neighbour's steps old: the whole steps it
is behind the newest, and the part of a step the newest has probably aged since. A publisher
paused for a record, an evaluation or a checkpoint says so (and since when), and its newest then
ages only until the pause began: a paused rank reads at most 1, an injected lag of D in [D, D+1],
a straggler below 1, an overlapped read about 1. ``b = a * T_j / T_i`` is the same age in the
reader's own steps (period ``T_i``). Time is the simulator's (and ``--deterministic``'s)
simulated time, or wall time with every rank's clock set to rank 0's; the engines supply it, the
arithmetic here is the same for both.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

#: Width of the bins of age histograms (in steps).
AGE_BIN = 0.25


@dataclass(frozen=True)
class Latest:
    """The newest snapshot a read considered: its stamp, publish time and the publisher's step
    period then; ``paused``: when its publisher stopped training (None: it has not)."""

    stamp: int
    published: float
    period: float
    paused: float | None = None


def snapshot_ages(stamp: int, latest: Latest, now: float, own_period: float) -> tuple[float, float]:
    """``(a, b)``: snapshot ``stamp``'s age in the publisher's steps and in the reader's own steps.

    A newest snapshot stamped later than ``now`` (clocks of different hosts, set equal only to the
    precision of their offset measurement) has aged 0.
    """
    until = now if latest.paused is None else min(now, latest.paused)
    fraction = min(1.0, max(0.0, until - latest.published) / latest.period)
    age = (latest.stamp - stamp) + fraction
    return age, age * latest.period / own_period


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


def age_bin(age: float, width: float = AGE_BIN) -> float:
    """The lower edge of ``age``'s histogram bin (bins ``width`` wide)."""
    return math.floor(age / width) * width


def histogram_median(histogram: Counter[float], width: float = AGE_BIN) -> float | None:
    """The upper edge of the bin that holds the median of a histogram binned ``width`` wide (None
    when empty): the median is below it."""
    total = sum(histogram.values())
    if not total:
        return None
    seen, edge = 0, 0.0
    for edge in sorted(histogram):
        seen += histogram[edge]
        if 2 * seen >= total:
            break
    return edge + width
