"""A straggler on wall time: a rank whose iteration ``k`` has slowdown ``f`` sleeps ``(f - 1)``
times its last step's work before that step, so it runs ``f`` times slower than it could. (The simulator needs no
pacing: its time is simulated.) The engine gives the sleep: under MPI one that keeps MPI
progress, so a sleeping rank still serves its neighbours' one-sided reads and moves its
non-blocking collectives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StragglerPacing:
    """``with pacing.work(k): ...`` sleeps first (when iteration ``k`` is slowed), then times the
    block as the work. ``slowdown(k)``: the factor of iteration ``k``."""

    def __init__(self, slowdown: Callable[[int], float], sleep: Callable[[float], None] = time.sleep) -> None:
        self.slowdown = slowdown
        self.sleep = sleep
        self.last_work_seconds = 0.0

    @contextmanager
    def work(self, iteration: int) -> Iterator[None]:
        factor = self.slowdown(iteration)
        if factor > 1.0 and self.last_work_seconds > 0.0:
            self.sleep((factor - 1.0) * self.last_work_seconds)
        started = time.perf_counter()
        yield
        self.last_work_seconds = time.perf_counter() - started


class LockStepTime:
    """Simulated start time of each iteration of ranks that wait for each other (the collective
    modes): every iteration lasts as long as its slowest rank's, ``max_r slowdown(r, t)``."""

    def __init__(self, slowdown: Callable[[int, int], float], ranks: int) -> None:
        self.slowdown = slowdown
        self.ranks = ranks
        self._starts = [0.0]

    def start(self, iteration: int) -> float:
        while len(self._starts) <= iteration:
            t = len(self._starts) - 1
            self._starts.append(self._starts[t] + max(self.slowdown(r, t) for r in range(self.ranks)))
        return self._starts[iteration]
