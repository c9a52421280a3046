"""Simulator engine for the parameter-server modes (ps-asgd, dcasgd-c, dcasgd-a, sasgd).

Ranks follow the MPI layout: the server is rank 0, worker ``w`` (data shard ``w``) is rank
``w + 1``, so delay specs name the same ranks in both engines. Step order:

1. Worker ``w`` starts at ``offset_w`` (``aligned``: 0; ``staggered``: ``w / N * f_w``, which
   spreads arrivals as real unsynchronized workers do) by pulling the server's weights.
2. Its ``k``-th gradient arrives at ``offset_w + (k + 1) * f_w``, computed at the weights it
   pulled; arrivals at the same time are taken in worker order. The server applies the mode's
   rule, then the worker pulls again.
3. A pull returns version ``max(0, version - lag(rank, 0, k))``; the server keeps its last
   ``max_lag + 1`` versions so the lag is exact, and remembers what each worker pulled (``w_bak``).
"""

from __future__ import annotations

import heapq
from collections import Counter

from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.server import ParameterServer
from pcasgd.delays import DelayModel
from pcasgd.errors import ConfigError
from pcasgd.sim.common import EpochClock, EpochHook, GradientOracle, SimResult

SERVER_RANK = 0
STARTS = ("staggered", "aligned")


def simulate_parameter_server(
    config: AlgorithmConfig,
    workers: int,
    delays: DelayModel,
    oracle: GradientOracle,
    initial_params: Tensor,
    iterations_per_epoch: int,
    epochs: int,
    hook: EpochHook | None = None,
    start: str = "staggered",
) -> SimResult:
    if start not in STARTS:
        raise ConfigError(f"worker start must be one of {', '.join(STARTS)}, got {start!r}")
    delays.check_fits(workers + 1)
    server = ParameterServer(config, initial_params, workers)
    versions: dict[int, Tensor] = {0: server.params}
    durations = [delays.slowdown(w + 1) for w in range(workers)]
    offsets = [w / workers * durations[w] if start == "staggered" else 0.0 for w in range(workers)]
    pulled: list[Tensor] = [initial_params] * workers
    done = [0] * workers
    clock = EpochClock(iterations_per_epoch, epochs, hook)

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        return list(pulled), server.params, list(done)

    def pull(worker: int) -> None:
        lag = delays.lag(worker + 1, SERVER_RANK, done[worker])
        version = max(0, server.version - lag, min(versions))
        pulled[worker] = versions[version]
        server.record_pull(worker, versions[version], version)

    for worker in range(workers):
        pull(worker)
    arrivals = [(offsets[w] + durations[w], w) for w in range(workers)]
    heapq.heapify(arrivals)
    while arrivals and arrivals[0][0] <= clock.budget:
        time, worker = heapq.heappop(arrivals)
        clock.advance(time, view)
        grad, loss = oracle(worker, pulled[worker])
        clock.stats.add_loss(loss)
        report = server.push(worker, grad)
        clock.record_staleness([report.staleness])
        if report.applied:
            versions[server.version] = server.params
            versions.pop(server.version - delays.max_lag - 1, None)
        done[worker] += 1
        pull(worker)
        heapq.heappush(arrivals, (offsets[worker] + (done[worker] + 1) * durations[worker], worker))
    clock.finish(view)
    return SimResult(list(pulled), server.params, list(done), clock.total_staleness, Counter(), clock.budget)
