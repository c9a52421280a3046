"""What every engine (the simulator, the MPI runtime) and the optimizer API share: the run they
are given, the result they return, per-epoch statistics, when to record, the gradient oracle's
protocol and the finiteness check; and the clock of simulated time that the simulator and the
MPI runtime's lock-step modes run on.

Simulated time: an agent of slowdown factor ``f`` spends ``f`` time units per iteration; one
epoch is ``iterations_per_epoch`` units (an unslowed agent's pass over its shard). The run
lasts ``epochs`` epochs of simulated time, so a straggler does fewer iterations, as it would
under a wall-clock budget. The epoch hook fires when simulated time crosses each epoch boundary.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.delays import DelayModel
from pcasgd.errors import DivergenceError
from pcasgd.protocol.ages import age_bin, histogram_median

#: Width of the bins of the prediction-quality histograms (ratios ``|x_hat - x| / |x_stale - x|``).
RATIO_BIN = 0.05


def all_finite(values: Tensor) -> bool:
    """True when no element of ``values`` is NaN or Inf.

    NaN and Inf propagate through a sum, so a finite sum proves every element finite with one
    reduction; ``isfinite(values).all()`` first writes a mask as large as the model into fresh
    memory, which measured 40x slower on the CPU for ResNet-18. A sum of finite elements can
    still overflow: then the elementwise check decides.
    """
    if math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def check_finite(params: Tensor, who: str, iteration: int) -> None:
    """Raise :class:`DivergenceError` naming ``who`` and ``iteration`` if ``params`` hold NaN or Inf."""
    if not all_finite(params):
        raise DivergenceError(f"{who} has NaN or Inf parameters after iteration {iteration}: the run diverged")


class GradientOracle(Protocol):
    """Returns ``(gradient, loss)`` of agent ``agent``'s next mini-batch at ``params``;
    ``samples`` counts the training samples it has drawn so far (0 for a synthetic problem)."""

    samples: int

    def __call__(self, agent: int, params: Tensor) -> tuple[Tensor, float]: ...


@dataclass(frozen=True)
class EngineRun:
    """What every engine is given: the mode, the delays, the problem, and the run's length."""

    config: AlgorithmConfig
    delays: DelayModel
    oracle: GradientOracle
    initial_params: Tensor
    iterations_per_epoch: int
    epochs: int
    hook: EpochHook | None = None
    # checkpoint(epoch, state): called after the hook at each epoch boundary but the last, with the
    # engine's whole state (picklable); resume: such a state, to continue from instead of starting.
    checkpoint: Checkpoint | None = None
    resume: dict[str, Any] | None = None
    record_every: int = 0  # iterations between records inside an epoch (0: at epoch boundaries only)
    # world_change(event): under --fault-tolerant, rank 0 reports each recovery from a dead rank
    # (who died, the new world, when it was noticed, recovered, and first stepped on)
    world_change: Callable[[dict[str, Any]], None] | None = None
    # take_over(): under --fault-tolerant, the recording rank died and this rank records from now
    # on, in the same files; returns the last epoch recorded (None: none yet) and its samples
    take_over: Callable[[], tuple[float | None, int]] | None = None

    def records(self) -> RecordSchedule:
        return RecordSchedule(self.iterations_per_epoch, self.epochs, self.record_every)


@dataclass
class EpochStats:
    """Counters of one epoch (reset at each boundary)."""

    staleness_sum: float = 0.0
    staleness_count: int = 0
    staleness_top: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    predict_share_sum: float = 0.0
    predict_share_count: int = 0
    staleness_histogram: Counter[int] = field(default_factory=Counter)
    # neighbour-step ages of the snapshots mixed (decentralized modes; ALGORITHMS.md "Revision")
    age_sum: float = 0.0
    age_count: int = 0
    age_top: float = 0.0
    age_histogram: Counter[float] = field(default_factory=Counter)  # by bin (pcasgd.protocol.ages)
    # prediction quality (pcasgd.algorithms.quality): ratios by RATIO_BIN bin
    prediction_histogram: Counter[float] = field(default_factory=Counter)

    def add_staleness(self, values: tuple[int, ...] | list[int]) -> None:
        self.staleness_histogram.update(values)
        self.staleness_sum += sum(values)
        self.staleness_count += len(values)
        self.staleness_top = max(self.staleness_top, *values) if values else self.staleness_top

    def add_ages(self, values: Sequence[float]) -> None:
        self.age_histogram.update(age_bin(a) for a in values)
        self.age_sum += sum(values)
        self.age_count += len(values)
        self.age_top = max(self.age_top, *values) if values else self.age_top

    def add_prediction_ratios(self, values: Sequence[float]) -> None:
        self.prediction_histogram.update(ratio_bin(r) for r in values)

    @property
    def prediction_ratio_median(self) -> float | None:
        """The upper edge of the bin of the median prediction ratio (None: no prediction scored)."""
        return histogram_median(self.prediction_histogram, RATIO_BIN)

    def merge(self, other: EpochStats) -> None:
        self.staleness_sum += other.staleness_sum
        self.staleness_count += other.staleness_count
        self.staleness_top = max(self.staleness_top, other.staleness_top)
        self.loss_sum += other.loss_sum
        self.loss_count += other.loss_count
        self.predict_share_sum += other.predict_share_sum
        self.predict_share_count += other.predict_share_count
        self.staleness_histogram.update(other.staleness_histogram)
        self.age_sum += other.age_sum
        self.age_count += other.age_count
        self.age_top = max(self.age_top, other.age_top)
        self.age_histogram.update(other.age_histogram)
        self.prediction_histogram.update(other.prediction_histogram)

    def add_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.loss_count += 1

    def add_predict_share(self, share: float) -> None:
        self.predict_share_sum += share
        self.predict_share_count += 1

    @property
    def mean_loss(self) -> float | None:
        """None when no agent trained since the previous record (a record the run's progress
        passed at once with the next one): JSON has no NaN."""
        return self.loss_sum / self.loss_count if self.loss_count else None

    @property
    def staleness_mean(self) -> float | None:
        """None when nothing was read (JSON has no NaN, and 0 would claim fresh reads)."""
        return self.staleness_sum / self.staleness_count if self.staleness_count else None

    @property
    def staleness_max(self) -> int:
        return self.staleness_top

    @property
    def age_mean(self) -> float | None:
        return self.age_sum / self.age_count if self.age_count else None

    @property
    def predict_fraction(self) -> float | None:
        if not self.predict_share_count:
            return None
        return self.predict_share_sum / self.predict_share_count


@dataclass(frozen=True)
class EpochView:
    """What the epoch hook sees at a boundary."""

    epoch: float  # an int at epoch boundaries; fractional for the records between them
    agent_params: list[Tensor]
    reference_params: Tensor  # the model to evaluate: mean of agents, server, or global weights
    iterations: list[int]  # iterations done so far, per agent
    stats: EpochStats
    sim_time: float
    samples: int = 0  # training samples processed by all agents so far


EpochHook = Callable[[EpochView], None]
Checkpoint = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class EngineResult:
    agent_params: list[Tensor]
    reference_params: Tensor
    iterations: list[int]
    staleness: Counter[int]  # over the whole run
    decisions: Counter[str]
    sim_time: float
    # whole run, decentralized modes: per neighbour read, the histogram of its snapshots' ages
    ages: dict[int, Counter[float]] = field(default_factory=dict)
    world_changes: list[dict[str, Any]] = field(default_factory=list)  # --fault-tolerant: each recovery
    # whole run, pcasgd family: the prediction ratios, by RATIO_BIN bin
    prediction_ratios: Counter[float] = field(default_factory=Counter)


class RecordSchedule:
    """When a run records: at every epoch boundary, and every ``interval`` iterations between them.

    Positions are in iterations (simulated time for the simulator). :meth:`due` never yields the
    run's last boundary: engines record that one when they finish.
    """

    def __init__(self, iterations_per_epoch: int, epochs: int, interval: int = 0) -> None:
        self.iterations_per_epoch = iterations_per_epoch
        self.epochs = epochs
        self.interval = interval
        self.next_epoch = 1
        self.next_mark = 1

    def _next(self) -> tuple[float, bool] | None:
        ipe = self.iterations_per_epoch
        candidates = []
        if self.next_epoch < self.epochs:
            candidates.append((float(self.next_epoch * ipe), True))
        if self.interval:
            while (self.next_mark * self.interval) % ipe == 0:  # an epoch boundary: recorded as such
                self.next_mark += 1
            if self.next_mark * self.interval < self.epochs * ipe:
                candidates.append((float(self.next_mark * self.interval), False))
        return min(candidates) if candidates else None

    def skip_to(self, position: float) -> None:
        """A resumed run: the records before ``position`` were made before the checkpoint."""
        for _ in self.due(position):
            pass

    def due(self, position: float, ends: bool = False) -> Iterator[tuple[float, bool]]:
        """The records ``position`` has reached, in order: ``(epoch, is_epoch_boundary)``.

        Work that starts at a boundary belongs after it; work that ends there (``ends=True``:
        parameter-server pushes) belongs before it.
        """
        while (upcoming := self._next()) is not None and (
            upcoming[0] < position or (not ends and upcoming[0] == position)
        ):
            at, is_epoch = upcoming
            if is_epoch:
                self.next_epoch += 1
            else:
                self.next_mark += 1
            yield (self.next_epoch - 1 if is_epoch else at / self.iterations_per_epoch), is_epoch


def make_due_records(due: list[tuple[float, bool]], make: Callable[[float, bool], None]) -> None:
    """Make the records of ``due`` (``(epoch, is_epoch_boundary)``, in order), each removed once
    made: one that a failure interrupts (``--fault-tolerant``) stays due for after the recovery."""
    while due:
        make(*due[0])
        due.pop(0)


class EpochClock:
    """Fires the hook for every record (epoch boundary, and every ``record_every`` iterations)
    that simulated time has reached, and the checkpoint callback after epoch boundaries."""

    def __init__(
        self,
        iterations_per_epoch: int,
        epochs: int,
        hook: EpochHook | None,
        samples: Callable[[], int] = lambda: 0,
        checkpoint: Checkpoint | None = None,
        record_every: int = 0,
    ) -> None:
        self.iterations_per_epoch = iterations_per_epoch
        self.samples = samples
        self.epochs = epochs
        self.hook = hook
        self.checkpoint = checkpoint
        self.records = RecordSchedule(iterations_per_epoch, epochs, record_every)
        self.stats = EpochStats()
        self.total_staleness: Counter[int] = Counter()
        self.total_ages: dict[int, Counter[float]] = {}
        self.total_predictions: Counter[float] = Counter()

    @property
    def budget(self) -> float:
        return float(self.epochs * self.iterations_per_epoch)

    def epoch_at(self, time: float) -> float:
        return time / self.iterations_per_epoch

    def record_staleness(self, values: tuple[int, ...] | list[int]) -> None:
        self.stats.add_staleness(values)
        self.total_staleness.update(values)

    def record_ages(self, ages: Sequence[tuple[int, float]]) -> None:
        """``(source, age)`` of each snapshot mixed in one step."""
        self.stats.add_ages([age for _, age in ages])
        add_ages_by_source(self.total_ages, ages)

    def record_predictions(self, ratios: Sequence[float]) -> None:
        self.stats.add_prediction_ratios(ratios)
        self.total_predictions.update(ratio_bin(r) for r in ratios)

    def advance(
        self,
        time: float,
        view: Callable[[], tuple[list[Tensor], Tensor, list[int]]],
        ends: bool = False,
        state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Fire the hook for the boundaries passed, before processing the events at ``time``.

        Events that start an iteration at a boundary belong to the next epoch; events that end
        an iteration there (``ends=True``: parameter-server pushes) belong to the epoch it closes.
        ``state``: the engine's state at this point, for the checkpoint callback.
        """
        for epoch, is_epoch in self.records.due(time, ends):
            self._fire(view, epoch)
            if is_epoch and self.checkpoint is not None and state is not None:
                self.checkpoint(int(epoch), {**state(), "clock": self.state()})

    def state(self) -> dict[str, Any]:
        return {
            "next_epoch": self.records.next_epoch,
            "next_mark": self.records.next_mark,
            "stats": self.stats,
            "total_staleness": self.total_staleness,
            "total_ages": self.total_ages,
            "total_predictions": self.total_predictions,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.records.next_epoch, self.records.next_mark = state["next_epoch"], state["next_mark"]
        self.stats = state["stats"]
        self.total_staleness = state["total_staleness"]
        self.total_ages = state["total_ages"]
        self.total_predictions = state["total_predictions"]

    def finish(self, view: Callable[[], tuple[list[Tensor], Tensor, list[int]]]) -> None:
        for epoch, _ in self.records.due(float("inf")):
            self._fire(view, epoch)
        self._fire(view, self.epochs)

    def _fire(self, view: Callable[[], tuple[list[Tensor], Tensor, list[int]]], epoch: float) -> None:
        if self.hook is not None:
            agent_params, reference, iterations = view()
            time = epoch * self.iterations_per_epoch
            view = EpochView(epoch, agent_params, reference, iterations, self.stats, time, self.samples())
            self.hook(view)
        self.stats = EpochStats()


def ratio_bin(ratio: float) -> float:
    """The lower edge of a prediction ratio's histogram bin (rounded: the edges are JSON keys)."""
    return round(age_bin(ratio, RATIO_BIN), 6)


def add_ages_by_source(histograms: dict[int, Counter[float]], ages: Sequence[tuple[int, float]]) -> None:
    """Count each ``(source, age)`` in the binned histogram of its source."""
    for source, age in ages:
        histograms.setdefault(source, Counter())[age_bin(age)] += 1


def clock_for(run: EngineRun) -> EpochClock:
    """The simulator's clock for ``run`` (restored from its checkpoint when resuming)."""
    clock = EpochClock(
        run.iterations_per_epoch, run.epochs, run.hook, lambda: run.oracle.samples, run.checkpoint, run.record_every
    )
    if run.resume is not None:
        clock.restore(run.resume["clock"])
    return clock
