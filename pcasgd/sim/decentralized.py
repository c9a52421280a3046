"""Simulator engine for the decentralized modes (dsgd, asgd, pcasgd, pcasgd-pv, predict, clip).

Step order, which the MPI runtime's deterministic mode reproduces:

1. Agent ``i`` starts iteration ``k`` at simulated time ``k * f_i`` (``f_i`` its slowdown;
   synchronous modes use ``max_i f_i`` for every agent, and every agent reads fresh snapshots).
2. At each time point, first every agent starting an iteration computes its gradient at its
   current parameters and publishes the snapshot ``(x_i, g_i, k)`` into its ring; agents are
   taken in rank order.
3. Then each of them, in rank order, reads every in-neighbour ``j`` of the topology at ``k``
   (:func:`~pcasgd.protocol.reads.gather_reads`): the snapshot stamped
   ``s = max(0, latest_j - lag(i, j, k))``, with staleness ``tau = max(0, k - s)``, and applies
   its update.

A ring keeps each agent's last ``max_lag + 1`` snapshots, so an injected lag is exact.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

import torch
from torch import Tensor

from pcasgd.algorithms.consensus import ConsensusAgent, Snapshot
from pcasgd.engine import EngineResult, EngineRun, check_finite, clock_for
from pcasgd.protocol.reads import gather_reads
from pcasgd.topology import Schedule


class SnapshotRing:
    """The last ``capacity`` snapshots one agent published, looked up by stamp."""

    def __init__(self, capacity: int) -> None:
        self._snapshots: deque[Snapshot] = deque(maxlen=capacity)

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshots.append(snapshot)

    @property
    def latest_stamp(self) -> int:
        return self._snapshots[-1].stamp

    def behind_newest(self, lag: int) -> Snapshot:
        """The snapshot ``lag`` stamps behind the newest (stamp 0 at the least), or the oldest kept."""
        oldest = self._snapshots[0].stamp
        stamp = max(0, self.latest_stamp - lag)
        return self._snapshots[max(stamp, oldest) - oldest]


def simulate_decentralized(run: EngineRun, schedule: Schedule, segments: Sequence[int] | None = None) -> EngineResult:
    config, delays, oracle = run.config, run.delays, run.oracle
    n = schedule.size
    delays.check_fits(n)
    if run.resume is not None:
        agents, rings, next_iteration = run.resume["agents"], run.resume["rings"], run.resume["next_iteration"]
    else:
        agents = [ConsensusAgent(config, run.initial_params, segments) for _ in range(n)]
        rings = [SnapshotRing(delays.max_lag + 1) for _ in range(n)]
        next_iteration = [0] * n
    if config.synchronous:
        durations = [max(delays.slowdown(i) for i in range(n))] * n
    else:
        durations = [delays.slowdown(i) for i in range(n)]
    clock = clock_for(run)

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        params = [agent.params for agent in agents]
        return params, torch.stack(params).mean(dim=0), list(next_iteration)

    while True:
        start_times = [next_iteration[i] * durations[i] for i in range(n)]
        time = min(start_times)
        if time >= clock.budget:
            break
        clock.advance(time, view, state=lambda: {"agents": agents, "rings": rings, "next_iteration": next_iteration})
        group = [i for i in range(n) if start_times[i] == time]
        grads = {}
        for i in group:
            grads[i], loss = oracle(i, agents[i].params)
            clock.stats.add_loss(loss)
            rings[i].publish(Snapshot(agents[i].params, grads[i], next_iteration[i]))
        for i in group:
            k = next_iteration[i]
            gathered = gather_reads(i, k, schedule.at(k), config, delays, lambda j, lag: rings[j].behind_newest(lag))
            report = agents[i].step(grads[i], gathered.reads, gathered.self_weight, clock.epoch_at(time))
            check_finite(agents[i].params, f"agent {i}", k)
            clock.record_staleness(report.staleness)
            if report.decision in ("predict", "clip"):
                clock.stats.add_predict_share(report.predict_share)
            next_iteration[i] += 1
    clock.finish(view)
    params, reference, iterations = view()
    decisions: Counter[str] = Counter()
    for agent in agents:
        decisions.update(agent.decisions)
    return EngineResult(params, reference, iterations, clock.total_staleness, decisions, clock.budget)
