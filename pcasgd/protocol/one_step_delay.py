"""odsgd's reductions in flight, whatever carries them (the simulator's mean, an MPI or Horovod
allreduce).

The reduction started at step ``t`` completes before the local step of ``t + L``: ``L = 1``
(one reduction in flight, as OD-SGD), or ``L = 0`` with ``--odsgd-no-overlap`` (blocking); its
staleness is ``L``. The first ``odsgd_warmup`` steps are plain ssgd, and the reductions still in
flight at the end complete before the final weights are read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from torch import Tensor

from pcasgd.algorithms.collective import OneStepDelayAgent
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


def complete_reductions(
    agents: Sequence[OneStepDelayAgent],
    reductions: Iterable[tuple[int, Reduction]],
    mean_of: Callable[[Reduction, int], Tensor],
    epoch: float = 0.0,
) -> int:
    """Apply each reduction's mean gradient (``mean_of(reduction, step that started it)``) to the
    global weights of every agent that this process holds; how many were completed."""
    completed = 0
    for started, reduction in reductions:
        mean = mean_of(reduction, started)
        for agent in agents:
            agent.complete(mean, epoch)
        completed += 1
    return completed


def one_step_delay_step(
    agents: Sequence[OneStepDelayAgent],
    grads: Sequence[Tensor],
    queue: ReductionQueue[Reduction],
    step: int,
    reduction: Reduction,
    mean_of: Callable[[Reduction, int], Tensor],
    epoch: float = 0.0,
    lr: float | None = None,
) -> list[int]:
    """One odsgd iteration once its gradients ``grads`` (one per agent, taken at the local weights)
    are computed and their reduction started: the simulator (every agent in one process), the MPI
    engine and :class:`pcasgd.CollectiveOptimizer` (one agent each) all step through here.

    A warm-up step completes its own reduction and syncs the local weights (plain ssgd); later
    steps queue it, complete the ones now due, and take the local step from the last completed
    global weights. Returns the staleness of each reduction completed (0 in warm-up, else the
    queue's latency). ``lr``: the rate a torch scheduler set (the optimizer API), else the
    config's schedule at ``epoch``.
    """
    if queue.warming_up(step):
        complete_reductions(agents, [(step, reduction)], mean_of, epoch)
        for agent in agents:
            agent.sync_local()
        return [0]
    queue.start(step, reduction)
    completed = complete_reductions(agents, queue.due(step), mean_of, epoch)
    for agent, grad in zip(agents, grads, strict=True):
        agent.local_step(grad, epoch, lr)
    return [queue.latency] * completed
