"""Simulator engine for the parameter-server modes (ps-asgd, dcasgd-c, dcasgd-a, sasgd).

Ranks follow the MPI layout: the server is rank 0, worker ``w`` (data shard ``w``) is rank
``w + 1``, so delay specs name the same ranks in both engines. Step order:

1. Every worker pulls the server's weights at time 0.
2. A worker of slowdown ``f`` pushes the gradient at the weights it pulled ``f`` time units
   after its pull; pushes at the same time are taken in worker order. The server applies the
   mode's rule (sasgd: after every ``c`` gradients), then the worker pulls again.
3. Hardsync sasgd (n = 1, ``config.synchronous``): a worker whose gradient is buffered pulls
   only when the update that includes it is applied, and its next gradient is timed from then;
   injected lags do not apply (waiting costs time, not staleness).
4. Otherwise a pull returns version ``max(0, version - lag(rank, 0, k))``; the server keeps its
   last ``max_lag + 1`` versions so the lag is exact, and remembers what each worker pulled
   (``w_bak``).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

from torch import Tensor

from pcasgd.algorithms.server import ParameterServer
from pcasgd.sim.common import SimResult, SimRun, check_finite

SERVER_RANK = 0


def simulate_parameter_server(
    run: SimRun, workers: int, on_pull: Callable[[int, Tensor], None] | None = None
) -> SimResult:
    """Run the server and its workers; ``on_pull(worker, weights)`` is told of every pull (the MPI
    runtime's deterministic mode sends the weights to the worker's rank there)."""
    config, delays, oracle, initial_params = run.config, run.delays, run.oracle, run.initial_params
    delays.check_fits(workers + 1)
    durations = [delays.slowdown(w + 1) for w in range(workers)]
    if run.resume is not None:
        server, versions, pulled = run.resume["server"], run.resume["versions"], run.resume["pulled"]
        done, waiting, arrivals = run.resume["done"], run.resume["waiting"], run.resume["arrivals"]
        heapq.heapify(arrivals)
    else:
        server = ParameterServer(config, initial_params, workers)
        versions: dict[int, Tensor] = {0: server.params}
        pulled: list[Tensor] = [initial_params] * workers
        done = [0] * workers
        waiting: list[int] = []
        arrivals: list[tuple[float, int]] = []
    clock = run.clock()
    wait = config.synchronous

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        return list(pulled), server.params, list(done)

    def pull(worker: int, time: float) -> None:
        lag = 0 if wait else delays.lag(worker + 1, SERVER_RANK, done[worker])
        version = max(0, server.version - lag, min(versions))
        pulled[worker] = versions[version]
        server.record_pull(worker, versions[version], version)
        if on_pull is not None:
            on_pull(worker, versions[version])
        heapq.heappush(arrivals, (time + durations[worker], worker))

    def state() -> dict:
        """Everything, with the event being processed put back among the arrivals."""
        return {
            "server": server,
            "versions": versions,
            "pulled": pulled,
            "done": done,
            "waiting": waiting,
            "arrivals": [*arrivals, (time, worker)],
        }

    if run.resume is None:
        for worker in range(workers):
            pull(worker, 0.0)
    while arrivals and arrivals[0][0] <= clock.budget:
        time, worker = heapq.heappop(arrivals)
        clock.advance(time, view, ends=True, state=state)
        grad, loss = oracle(worker, pulled[worker])
        clock.stats.add_loss(loss)
        report = server.push(worker, grad, clock.epoch_at(time))
        clock.record_staleness([report.staleness])
        done[worker] += 1
        if report.applied:
            check_finite(server.params, "the server (rank 0)", server.version)
            versions[server.version] = server.params
            versions.pop(server.version - delays.max_lag - 1, None)
            for released in [*waiting, worker]:
                pull(released, time)
            waiting.clear()
        elif wait:
            waiting.append(worker)
        else:
            pull(worker, time)
    clock.finish(view)
    return SimResult(list(pulled), server.params, list(done), clock.total_staleness, Counter(), clock.budget)
