"""The parameter-server protocol (ps-asgd, dcasgd-c, dcasgd-a, sasgd), whatever carries it.

Ranks follow the MPI layout: the server is rank 0, worker ``w`` (data shard ``w``) is rank
``w + 1``, so delay specs name the same ranks in every engine.

:class:`VersionedServer` is the server's side of one pull and one push: the mode's update rule,
the last ``max_lag + 1`` versions (so an injected lag is exact), what each worker pulled, and
hardsync sasgd's waiting list. :func:`serve_in_simulated_time` runs it on simulated time, with
this step order:

1. Every worker pulls the server's weights at time 0.
2. A worker pushes the gradient at the weights it pulled ``f`` time units after its pull, ``f``
   the slowdown of that gradient (its iteration's, ``DelayModel.step_slowdown``); pushes at the
   same time are taken in worker order. The server applies the mode's rule (sasgd: after every
   ``c`` gradients), then the worker pulls again.
3. Hardsync sasgd (n = 1, ``config.synchronous``): a worker whose gradient is buffered pulls
   only when the update that includes it is applied, and its next gradient is timed from then;
   injected lags do not apply (waiting costs time, not staleness).
4. Otherwise a pull returns version ``max(0, version - lag(rank, 0, k))``.

The simulator runs it with local gradients; the MPI runtime's deterministic mode runs it on rank
0 with gradients from the worker ranks, and its asynchronous mode drives
:class:`VersionedServer` in the order gradients arrive.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.server import ParameterServer, PushReport
from pcasgd.delays import DelayModel
from pcasgd.engine import EngineResult, EngineRun, check_finite, clock_for

SERVER_RANK = 0


class VersionedServer:
    """The server's state and its answers to pulls and pushes."""

    def __init__(self, config: AlgorithmConfig, delays: DelayModel, initial_params: Tensor, workers: int) -> None:
        self.config = config
        self.delays = delays
        self.workers = workers
        self.server = ParameterServer(config, initial_params, workers)
        self.versions: dict[int, Tensor] = {0: self.server.params}
        self.pulled: list[Tensor] = [initial_params] * workers
        self.done = [0] * workers
        self.waiting: list[int] = []

    @property
    def params(self) -> Tensor:
        return self.server.params

    def pull(self, worker: int) -> Tensor:
        """The weights ``worker`` receives now: the newest version, ``lag`` versions old if a delay
        spec injects one (never older than the versions kept)."""
        lag = 0 if self.config.synchronous else self.delays.lag(worker + 1, SERVER_RANK, self.done[worker])
        version = max(0, self.server.version - lag, min(self.versions))
        self.pulled[worker] = self.versions[version]
        self.server.record_pull(worker, self.versions[version], version)
        return self.versions[version]

    def push(self, worker: int, grad: Tensor, epoch: float) -> tuple[PushReport, list[int]]:
        """Apply ``worker``'s gradient; return the report and the workers to answer now (hardsync:
        everyone whose gradient joined the update, once it is applied)."""
        report = self.server.push(worker, grad, epoch)
        self.done[worker] += 1
        if report.applied:
            self._keep_version()
            released, self.waiting = [*self.waiting, worker], []
        elif self.config.synchronous:
            released, self.waiting = [], [*self.waiting, worker]
        else:
            released = [worker]
        return report, released

    def remove(self, worker: int, epoch: float) -> list[int]:
        """``worker`` died (``--fault-tolerant``); return the workers to answer now (hardsync:
        those waiting, when the buffered gradients now make an update)."""
        self.waiting = [waiting for waiting in self.waiting if waiting != worker]
        if not self.server.remove_worker(worker, epoch):
            return []
        self._keep_version()
        released, self.waiting = self.waiting, []
        return released

    def _keep_version(self) -> None:
        check_finite(self.server.params, "the server (rank 0)", self.server.version)
        self.versions[self.server.version] = self.server.params
        self.versions.pop(self.server.version - self.delays.max_lag - 1, None)

    def release_all(self) -> list[int]:
        """Every worker still waiting (the run is over: they are told to stop)."""
        released, self.waiting = self.waiting, []
        return released


def serve_in_simulated_time(
    run: EngineRun, workers: int, on_pull: Callable[[int, Tensor], None] | None = None
) -> EngineResult:
    """Run the server and its workers on simulated time; ``on_pull(worker, weights)`` is told of
    every pull (the MPI runtime's deterministic mode sends the weights to the worker's rank there)."""
    delays, oracle = run.delays, run.oracle
    delays.check_fits(workers + 1)
    if run.resume is not None:
        served: VersionedServer = run.resume["served"]
        arrivals: list[tuple[float, int]] = list(run.resume["arrivals"])
        heapq.heapify(arrivals)
    else:
        served = VersionedServer(run.config, delays, run.initial_params, workers)
        arrivals = []
    clock = clock_for(run)

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        return list(served.pulled), served.params, list(served.done)

    def pull(worker: int, time: float) -> None:
        weights = served.pull(worker)
        if on_pull is not None:
            on_pull(worker, weights)
        heapq.heappush(arrivals, (time + delays.step_slowdown(worker + 1, served.done[worker]), worker))

    def state() -> dict:
        """Everything, with the event being processed put back among the arrivals."""
        return {"served": served, "arrivals": [*arrivals, (time, worker)]}

    if run.resume is None:
        for worker in range(workers):
            pull(worker, 0.0)
    while arrivals and arrivals[0][0] <= clock.budget:
        time, worker = heapq.heappop(arrivals)
        clock.advance(time, view, ends=True, state=state)
        grad, loss = oracle(worker, served.pulled[worker])
        clock.stats.add_loss(loss)
        report, released = served.push(worker, grad, clock.epoch_at(time))
        clock.record_staleness([report.staleness])
        for answered in released:
            pull(answered, time)
    clock.finish(view)
    return EngineResult(
        list(served.pulled), served.params, list(served.done), clock.total_staleness, Counter(), clock.budget
    )
