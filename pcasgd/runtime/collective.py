"""The collective modes on MPI: ``ssgd`` and ``odsgd`` with MPI allreduce.

Every rank runs the same number of iterations as the simulator (the slowest rank sets the
pace: ``t * max slowdown < epochs * iterations_per_epoch``). The allreduce is non-blocking and
completed under the run's deadline.

* ``ssgd``: gradient at the shared weights, allreduce, mean, one momentum step.
* ``odsgd``: gradient at the local weights; start the allreduce; complete the one started the
  iteration before (``--odsgd-no-overlap``: this one) and apply it to the global weights; then
  the local step. The reduction in flight overlaps the next gradient computation.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
import torch
from mpi4py import MPI
from torch import Tensor

from pcasgd.algorithms.collective import GlobalSGD, OneStepDelayAgent
from pcasgd.errors import ConfigError
from pcasgd.runtime.recording import RankState, Recorder
from pcasgd.sim.common import EpochStats, SimResult, SimRun, check_finite
from pcasgd.transport.deadline import POLL_SECONDS, Deadline


class PendingMean:
    """A non-blocking allreduce of one gradient, and the mean it yields.

    Open MPI advances a non-blocking collective only inside MPI calls. With ``progress``, a
    helper thread owns the request and tests it every half millisecond, so the reduction moves
    while this rank computes (torch releases the GIL); the caller then only waits for the result.
    """

    def __init__(self, comm: MPI.Comm, grad: Tensor, progress: bool = False) -> None:
        self.size = comm.Get_size()
        self.send = grad.detach().cpu().numpy().copy()
        self.receive = np.empty_like(self.send)
        self.request = comm.Iallreduce(self.send, self.receive, op=MPI.SUM)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._progress, daemon=True) if progress else None
        if self._thread is not None:
            self._thread.start()

    def _progress(self) -> None:
        while not self.request.Test():
            time.sleep(POLL_SECONDS)
        self._done.set()

    def mean(self, deadline: Deadline, iteration: int) -> Tensor:
        what = f"the gradient allreduce of iteration {iteration}"
        if self._thread is None:
            deadline.wait(self.request, what)
        else:
            with deadline.guard(what):
                self._done.wait()
        return torch.from_numpy(self.receive) / self.size


class HorovodMean:
    """The same mean through Horovod (``hvd.DistributedOptimizer``'s averaging), polled under the deadline."""

    def __init__(self, grad: Tensor, iteration: int) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        self.handle = hvd.allreduce_async(grad.detach().cpu(), op=hvd.Average, name=f"pcasgd.grad.{iteration}")

    def mean(self, deadline: Deadline, iteration: int) -> Tensor:
        with deadline.guard(f"the Horovod allreduce of iteration {iteration}"):
            while not self.hvd.poll(self.handle):
                time.sleep(POLL_SECONDS)
        return self.hvd.synchronize(self.handle)


def init_horovod(comm: MPI.Comm) -> None:
    """Start Horovod on the same MPI world (it must be built against mpi4py's MPI)."""
    try:
        import horovod.torch as hvd
    except ImportError as error:
        raise ConfigError(f"--comm horovod needs Horovod ({error}); build it with launch/build-horovod.sh") from None
    hvd.init(comm=comm)
    if hvd.size() != comm.Get_size():
        raise ConfigError(f"Horovod sees {hvd.size()} ranks but MPI has {comm.Get_size()}")


class CollectiveRank:
    def __init__(
        self, comm: MPI.Comm, run: SimRun, deadline: Deadline, straggle: bool = True, progress_thread: bool = False
    ) -> None:
        self.progress_thread = progress_thread
        self.horovod = run.config.comm == "horovod"
        if self.horovod:
            init_horovod(comm)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.run = run
        self.config = run.config
        self.deadline = deadline
        self.recorder = Recorder(comm, run, deadline)
        self.slowdown = run.delays.slowdown(self.rank) if straggle else 1.0
        self.epoch_stats = EpochStats()
        self.staleness: Counter[int] = Counter()
        self.steps = 0
        self._last_work_seconds = 0.0
        self.shared = GlobalSGD(self.config, run.initial_params) if self.config.mode == "ssgd" else None
        self.agent = OneStepDelayAgent(self.config, run.initial_params) if self.config.mode == "odsgd" else None
        self.in_flight: deque[tuple[int, PendingMean]] = deque()

    def _local(self) -> Tensor:
        return self.shared.params if self.shared is not None else self.agent.local_params

    def _reference(self) -> Tensor:
        return self.shared.params if self.shared is not None else self.agent.global_params

    def train(self) -> SimResult | None:
        run = self.run
        step_time = max(run.delays.slowdown(r) for r in range(self.comm.Get_size()))
        next_epoch = 1
        t = 0
        while t * step_time < run.epochs * run.iterations_per_epoch:
            while next_epoch < run.epochs and next_epoch * run.iterations_per_epoch <= t * step_time:
                self._epoch(next_epoch, t)
                next_epoch += 1
            if self.shared is not None:
                self._ssgd_step(t)
            else:
                self._odsgd_step(t)
            t += 1
        while self.in_flight:  # odsgd: reductions still in flight complete before the final weights
            started, pending = self.in_flight.popleft()
            self.agent.complete(pending.mean(self.deadline, started))
            self._record_staleness(1)
        self.steps = t
        states = self.recorder.gather(self._state(), "gathering the final weights")
        return None if states is None else self.recorder.result(states, self._reference())

    # -- steps ------------------------------------------------------------------------------

    def _gradient(self, params: Tensor) -> Tensor:
        if self.slowdown > 1.0:
            time.sleep((self.slowdown - 1.0) * self._last_work_seconds)
        started = time.perf_counter()
        grad, loss = self.run.oracle(self.rank, params)
        self._last_work_seconds = time.perf_counter() - started
        self.epoch_stats.add_loss(loss)
        return grad

    def _ssgd_step(self, t: int) -> None:
        grad = self._gradient(self.shared.params)
        pending = HorovodMean(grad, t) if self.horovod else PendingMean(self.comm, grad)
        self.shared.apply(pending.mean(self.deadline, t))
        check_finite(self.shared.params, f"rank {self.rank}", t)
        self._record_staleness(0)

    def _odsgd_step(self, t: int) -> None:
        agent, in_flight = self.agent, self.in_flight
        grad = self._gradient(agent.local_params)
        if t < self.config.odsgd_warmup:
            agent.complete(PendingMean(self.comm, grad).mean(self.deadline, t))
            agent.sync_local()
            self._record_staleness(0)
        else:
            in_flight.append((t, PendingMean(self.comm, grad, self.progress_thread)))
            latency = 1 if self.config.odsgd_overlap else 0
            while in_flight and in_flight[0][0] + latency <= t:
                started, pending = in_flight.popleft()
                agent.complete(pending.mean(self.deadline, started))
                self._record_staleness(latency)
            agent.local_step(grad)
        check_finite(agent.global_params, f"rank {self.rank}", t)

    def _record_staleness(self, value: int) -> None:
        self.staleness[value] += 1
        self.epoch_stats.add_staleness([value])

    # -- records ----------------------------------------------------------------------------

    def _state(self) -> RankState:
        samples = getattr(self.run.oracle, "samples", 0)
        return RankState(self._local(), self.epoch_stats, self.steps, samples, {}, self.staleness, Counter())

    def _epoch(self, epoch: int, t: int) -> None:
        self.steps = t
        states = self.recorder.gather(self._state(), f"gathering epoch {epoch}")
        if states is not None:
            self.recorder.fire(epoch, states, self._reference())
        self.epoch_stats = EpochStats()


def run_collective(comm: MPI.Comm, run: SimRun, deadline: Deadline, progress_thread: bool = False) -> SimResult | None:
    """Train with ssgd or odsgd over MPI allreduce; rank 0 gets the result, others None.

    ``progress_thread``: odsgd's reduction in flight is advanced by a helper thread (opt-in).
    """
    return CollectiveRank(comm, run, deadline, progress_thread=progress_thread).train()
