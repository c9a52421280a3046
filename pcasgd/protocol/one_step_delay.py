"""odsgd's reductions in flight, whatever carries them (the simulator's mean, an MPI or Horovod
allreduce).

The reduction started at step ``t`` completes before the local step of ``t + L``: ``L = 1``
(one reduction in flight, as OD-SGD), or ``L = 0`` with ``--odsgd-no-overlap`` (blocking); its
staleness is ``L``. The first ``odsgd_warmup`` steps are plain ssgd, and the reductions still in
flight at the end complete before the final weights are read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

from pcasgd.algorithms.config import AlgorithmConfig

Reduction = TypeVar("Reduction")


class ReductionQueue(Generic[Reduction]):
    """The reductions in flight, oldest first, each with the step that started it."""

    def __init__(self, config: AlgorithmConfig, in_flight: list[tuple[int, Reduction]] | None = None) -> None:
        self.latency = 1 if config.odsgd_overlap else 0
        self.warmup = config.odsgd_warmup
        self.in_flight: deque[tuple[int, Reduction]] = deque(in_flight or [])

    def warming_up(self, step: int) -> bool:
        """Step ``step`` is plain ssgd: its reduction completes at once."""
        return step < self.warmup

    def start(self, step: int, reduction: Reduction) -> None:
        self.in_flight.append((step, reduction))

    def due(self, step: int) -> Iterator[tuple[int, Reduction]]:
        """The reductions to complete before step ``step``'s local step, oldest first."""
        while self.in_flight and self.in_flight[0][0] + self.latency <= step:
            yield self.in_flight.popleft()

    def drain(self) -> Iterator[tuple[int, Reduction]]:
        """Every reduction still in flight (the run is over)."""
        while self.in_flight:
            yield self.in_flight.popleft()
