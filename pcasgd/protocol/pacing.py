"""A straggler on wall time: a rank of slowdown ``f`` sleeps ``(f - 1)`` times its last step's
work before the next step, so it runs ``f`` times slower than it could. (The simulator needs no
pacing: its time is simulated.) The engine gives the sleep: under MPI one that keeps MPI
progress, so a sleeping rank still serves its neighbours' one-sided reads and moves its
non-blocking collectives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StragglerPacing:
    """``with pacing.work(): ...`` sleeps first (a straggler only), then times the block as the work."""

    def __init__(self, slowdown: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.slowdown = slowdown
        self.sleep = sleep
        self.last_work_seconds = 0.0

    @contextmanager
    def work(self) -> Iterator[None]:
        if self.slowdown > 1.0 and self.last_work_seconds > 0.0:
            self.sleep((self.slowdown - 1.0) * self.last_work_seconds)
        started = time.perf_counter()
        yield
        self.last_work_seconds = time.perf_counter() - started
