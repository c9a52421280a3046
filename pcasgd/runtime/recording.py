"""What rank 0 learns from every rank at epoch boundaries and at the end, for any MPI runtime."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
from mpi4py import MPI
from torch import Tensor

from pcasgd.engine import EngineResult, EngineRun, EpochStats, EpochView
from pcasgd.transport.deadline import Deadline


@dataclass
class RankState:
    """One rank's view at an epoch boundary or at the end of training."""

    params: Tensor
    stats: EpochStats
    iterations: int
    samples: int
    totals: dict[str, float]
    staleness: Counter[int] | None = None
    decisions: Counter[str] | None = None
    ages: dict[int, Counter[float]] | None = None  # per in-neighbour (decentralized modes)
    predictions: Counter[float] | None = None  # prediction ratios over the run, binned (pcasgd family)


#: The key of :attr:`Recorder.lost_samples` for the samples trained on before a resize (no agent's number).
BEFORE_RESIZE = -1
#: The key of :attr:`Recorder.lost_samples` for what dead processes since replaced (--rejoin) trained on.
BEFORE_REJOIN = -2


class Recorder:
    """Gathers the ranks' states on rank 0 and turns them into epoch views and the final result.

    ``reference`` is the model to evaluate: by default the mean of the ranks' parameters
    (decentralized modes); collective modes pass their global weights.
    """

    def __init__(self, comm: MPI.Comm, run: EngineRun, deadline: Deadline) -> None:
        self.comm = comm
        self.run = run
        self.deadline = deadline
        # --fault-tolerant: what each agent lost so far had trained on when last recorded, so a
        # record's sample count (and the throughput from it) does not drop with them; an agent
        # that comes back (--resume) counts its own samples again and leaves this. A run resumed
        # onto another size keeps the samples of the world before under BEFORE_RESIZE.
        self.lost_samples: dict[int, int] = {}

    def gather(self, state: RankState, what: str) -> list[RankState] | None:
        """Every rank's state on rank 0 (None elsewhere); the barrier first makes the gather safe.

        Parameters travel as CPU tensors: a GPU tensor would be unpickled onto rank 0's device of
        the same index, which may not exist there.
        """
        self.deadline.wait(self.comm.Ibarrier(), what)
        with self.deadline.guard(what):
            return self.comm.gather(replace(state, params=state.params.cpu()), root=0)

    def fire(self, epoch: int, states: list[RankState], reference: Tensor | None = None) -> None:
        if self.run.hook is None:
            return
        params = [state.params for state in states]
        stats = EpochStats()
        for state in states:
            stats.merge(state.stats)
        view = EpochView(
            epoch,
            params,
            torch.stack(params).mean(dim=0) if reference is None else reference,
            [state.iterations for state in states],
            stats,
            float(epoch * self.run.iterations_per_epoch),
            sum(state.samples for state in states) + sum(self.lost_samples.values()),
        )
        self.run.hook(view)

    def result(self, states: list[RankState], reference: Tensor | None = None) -> EngineResult:
        self.fire(self.run.epochs, states, reference)
        staleness: Counter[int] = Counter()
        decisions: Counter[str] = Counter()
        ages: dict[int, Counter[float]] = {}
        predictions: Counter[float] = Counter()
        for state in states:
            predictions.update(state.predictions or {})
            staleness.update(state.staleness or {})
            decisions.update(state.decisions or {})
            for source, histogram in (state.ages or {}).items():
                ages.setdefault(source, Counter()).update(histogram)
        params = [state.params for state in states]
        budget = float(self.run.epochs * self.run.iterations_per_epoch)
        final = torch.stack(params).mean(dim=0) if reference is None else reference
        iterations = [state.iterations for state in states]
        return EngineResult(
            params, final, iterations, staleness, decisions, budget, ages, prediction_ratios=predictions
        )
