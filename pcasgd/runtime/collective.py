"""The collective modes on MPI: ``ssgd`` and ``odsgd`` with MPI allreduce.

Every rank runs the same number of iterations as the simulator (the slowest rank sets the
pace: iteration ``t`` starts at simulated time ``sum over u < t of max_r slowdown(r, u)``, and the
run lasts while that is below ``epochs * iterations_per_epoch``; the learning-rate schedule
follows that time). The allreduce is non-blocking and
completed under the run's deadline.

* ``ssgd``: gradient at the shared weights, allreduce, mean, one momentum step.
* ``odsgd``: gradient at the local weights; start the allreduce; complete the one started the
  iteration before (``--odsgd-no-overlap``: this one) and apply it to the global weights; then
  the local step. The reduction in flight overlaps the next gradient computation.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from functools import partial

import torch
from mpi4py import MPI
from torch import Tensor

from pcasgd.algorithms.collective import GlobalSGD, OneStepDelayAgent
from pcasgd.engine import EngineResult, EngineRun, EpochStats, check_finite, make_due_records
from pcasgd.protocol.one_step_delay import ReductionQueue, complete_reductions, one_step_delay_step
from pcasgd.protocol.pacing import LockStepTime, StragglerPacing
from pcasgd.runtime.recording import RankState, Recorder
from pcasgd.transport.deadline import POLL_SECONDS, Deadline
from pcasgd.transport.progress import MpiProgress
from pcasgd.transport.staging import HostStaging


class PendingMean:
    """A non-blocking allreduce of one gradient, and the mean it yields.

    Open MPI advances a non-blocking collective only inside MPI calls: the rank's
    :class:`~pcasgd.transport.progress.MpiProgress` (its opt-in thread) moves it during the compute.
    """

    def __init__(
        self, comm: MPI.Comm, grad: Tensor, staging: HostStaging, iteration: int, compression: str = "none"
    ) -> None:
        self.size = comm.Get_size()
        self.staging = staging
        # At most two reductions are in flight (odsgd's, and the one just started): two sets of buffers.
        # MPI has no bfloat16: its bytes summed as another type were garbage. It is summed in float32.
        # ``compression`` fp16: sent and summed in float16 (half the bytes, as Horovod's Compression.fp16).
        self.dtype = grad.dtype
        wire = grad.half() if compression == "fp16" else grad.float() if grad.dtype == torch.bfloat16 else grad
        self.send = staging.to_host(wire, f"allreduce.send.{iteration % 2}")
        self.receive = staging.host_buffer(f"allreduce.receive.{iteration % 2}", wire.shape, wire.dtype)
        self.request = comm.Iallreduce(self.send, self.receive, op=MPI.SUM)

    def total(self, deadline: Deadline, iteration: int) -> Tensor:
        """The sum over the ranks: the receive buffer itself, unless staged."""
        deadline.wait(self.request, f"the gradient allreduce of iteration {iteration}")
        return self.staging.to_device(self.receive).to(self.dtype)

    def mean(self, deadline: Deadline, iteration: int) -> Tensor:
        return self.total(deadline, iteration).div_(self.size)


class CompletedMean:
    """A reduction that completed before a checkpoint, kept in flight as it was."""

    def __init__(self, mean: Tensor) -> None:
        self._mean = mean

    def mean(self, deadline: Deadline, iteration: int) -> Tensor:
        return self._mean


class HorovodMean:
    """The same mean through Horovod (``hvd.DistributedOptimizer``'s averaging), polled under the deadline."""

    def __init__(self, grad: Tensor, iteration: int) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        self.device = grad.device
        on_device = grad.device.type == "cuda" and hvd.cuda_built()  # else Horovod reduces host tensors
        tensor = grad.detach() if on_device else grad.detach().cpu()
        self.handle = hvd.allreduce_async(tensor, op=hvd.Average, name=f"pcasgd.grad.{iteration}")

    def mean(self, deadline: Deadline, iteration: int) -> Tensor:
        with deadline.guard(f"the Horovod allreduce of iteration {iteration}"):
            while not self.hvd.poll(self.handle):
                time.sleep(POLL_SECONDS)
        return self.hvd.synchronize(self.handle).to(self.device)


class CollectiveRank:
    def __init__(
        self,
        comm: MPI.Comm,
        run: EngineRun,
        deadline: Deadline,
        straggle: bool = True,
        progress_thread: bool = False,
        staging: HostStaging | None = None,
        elastic: bool = False,
    ) -> None:
        self.staging = staging if staging is not None else HostStaging(run.initial_params.device, active=False)
        self.horovod = run.config.comm == "horovod"  # comm is then a HorovodComm (pcasgd.runtime.world)
        self.progress = None if self.horovod else MpiProgress(comm, thread=progress_thread)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.run = run
        self.config = run.config
        self.deadline = deadline
        self.recorder = Recorder(comm, run, deadline)
        delays = run.delays
        slowdown = partial(delays.step_slowdown, self.rank) if straggle else lambda _: 1.0
        self.pacing = StragglerPacing(slowdown, time.sleep if self.progress is None else self.progress.sleep)
        self.epoch_stats = EpochStats()
        self.staleness: Counter[int] = Counter()
        self.steps = 0
        self.shared = GlobalSGD(self.config, run.initial_params) if self.config.mode == "ssgd" else None
        self.agent = OneStepDelayAgent(self.config, run.initial_params) if self.config.mode == "odsgd" else None
        self.queue: ReductionQueue[PendingMean | CompletedMean] = ReductionQueue(self.config)
        self.starts = LockStepTime(delays.step_slowdown, comm.Get_size())  # the slowest sets the pace
        self.first_step = 0
        self.records = run.records()
        self._due: list[tuple[float, bool]] = []  # records due and not yet made (a failure may interrupt one)
        self.recorded_samples: list[int] = []  # rank 0: each rank's samples at the last record
        if run.resume is not None:
            self.load_state(run.resume)
        self.elastic = None
        if elastic:  # ssgd --comm horovod --fault-tolerant (pcasgd.runtime.elastic)
            from pcasgd.runtime.elastic import ElasticRank

            self.elastic = ElasticRank(self)

    def _local(self) -> Tensor:
        return self.shared.params if self.shared is not None else self.agent.local_params

    def _reference(self) -> Tensor:
        return self.shared.params if self.shared is not None else self.agent.global_params

    def train(self) -> EngineResult | None:
        try:
            if self.elastic is not None:
                result = self.elastic.train()
                return None if result is None else replace(result, world_changes=self.elastic.recovery.events)
            return self.train_steps()
        finally:
            if self.progress is not None:
                self.progress.close()

    def train_steps(self) -> EngineResult | None:
        run = self.run
        t = self.first_step
        while self.starts.start(t) < run.epochs * run.iterations_per_epoch:
            self._due.extend(self.records.due(self.starts.start(t)))
            make_due_records(self._due, partial(self._epoch, t=t))
            if self.shared is not None:
                self._ssgd_step(t)
            else:
                self._odsgd_step(t)
            t += 1
            if self.elastic is not None:
                self.elastic.stepped(t)
        if self.agent is not None:  # odsgd: the reductions in flight complete before the final weights
            for _ in range(complete_reductions([self.agent], self.queue.drain(), self._mean_of, self._epoch_of(t))):
                self._record_staleness(self.queue.latency)
        self.steps = t
        states = self.recorder.gather(self._state(), "gathering the final weights")
        return None if states is None else self.recorder.result(states, self._reference())

    # -- steps ------------------------------------------------------------------------------

    def _epoch_of(self, t: int) -> float:
        """The (fractional) epoch of step ``t``, for the learning-rate schedule (as the simulator's clock)."""
        return self.starts.start(t) / self.run.iterations_per_epoch

    def _gradient(self, params: Tensor, t: int) -> Tensor:
        with self.pacing.work(t):
            grad, loss = self.run.oracle(self.rank, params)
            if self.progress is not None:
                self.progress.poke()
        self.epoch_stats.add_loss(loss)
        return grad

    def _reduction(self, grad: Tensor, t: int) -> PendingMean:
        return PendingMean(self.comm, grad, self.staging, t, self.config.compression)

    def _ssgd_step(self, t: int) -> None:
        grad = self._gradient(self.shared.params, t)
        pending = HorovodMean(grad, t) if self.horovod else self._reduction(grad, t)
        self.shared.apply(pending.mean(self.deadline, t), self._epoch_of(t))
        check_finite(self.shared.params, f"rank {self.rank}", t)
        self._record_staleness(0)

    def _odsgd_step(self, t: int) -> None:
        grad = self._gradient(self.agent.local_params, t)
        staleness = one_step_delay_step(
            [self.agent], [grad], self.queue, t, self._reduction(grad, t), self._mean_of, self._epoch_of(t)
        )
        for value in staleness:
            self._record_staleness(value)
        check_finite(self.agent.global_params, f"rank {self.rank}", t)

    def _mean_of(self, pending: PendingMean | CompletedMean, started: int) -> Tensor:
        return pending.mean(self.deadline, started)

    def _record_staleness(self, value: int) -> None:
        self.staleness[value] += 1
        self.epoch_stats.add_staleness([value])

    # -- records ----------------------------------------------------------------------------

    def _state(self) -> RankState:
        samples = self.run.oracle.samples
        return RankState(self._local(), self.epoch_stats, self.steps, samples, {}, self.staleness, Counter())

    def _epoch(self, epoch: float, is_epoch: bool, t: int) -> None:
        self.steps = t
        states = self.recorder.gather(self._state(), f"gathering epoch {epoch}")
        if states is not None:
            self.recorded_samples = [state.samples for state in states]
            self.recorder.fire(epoch, states, self._reference())
        self.epoch_stats = EpochStats()
        if is_epoch and self.run.checkpoint is not None:
            self.run.checkpoint(int(epoch), self.state_before(t))

    # -- checkpoints ------------------------------------------------------------------------

    def state_before(self, t: int) -> dict:
        """The weights and optimizer state before step ``t``; a reduction in flight is completed
        (its result is what step ``t`` would use) and kept as done."""
        in_flight = self.queue.in_flight
        for index, (started, pending) in enumerate(in_flight):
            in_flight[index] = (started, CompletedMean(pending.mean(self.deadline, started)))
        return {
            "step": t,
            "shared": self.shared,
            "agent": self.agent,
            "in_flight": [(started, done.mean(self.deadline, started)) for started, done in in_flight],
            "staleness": self.staleness,
        }

    def load_state(self, state: dict) -> None:
        self.first_step = state["step"]
        self.records.skip_to(self.starts.start(self.first_step))
        self.shared, self.agent, self.staleness = state["shared"], state["agent"], state["staleness"]
        self.queue = ReductionQueue(
            self.config, [(started, CompletedMean(mean)) for started, mean in state["in_flight"]]
        )


def run_collective(
    comm: MPI.Comm,
    run: EngineRun,
    deadline: Deadline,
    progress_thread: bool = False,
    staging: HostStaging | None = None,
    fault_tolerant: bool = False,
) -> EngineResult | None:
    """Train with ssgd or odsgd over MPI allreduce (or ssgd over Horovod); rank 0 gets the result,
    others None.

    ``progress_thread``: a helper thread advances odsgd's reduction in flight during the compute
    (opt-in). ``fault_tolerant``: ssgd over Horovod survives dead workers with Horovod Elastic.
    """
    rank = CollectiveRank(comm, run, deadline, progress_thread=progress_thread, staging=staging, elastic=fault_tolerant)
    return rank.train()
