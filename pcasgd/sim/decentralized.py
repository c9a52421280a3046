"""Simulator engine for the decentralized modes (dsgd, asgd, pcasgd, pcasgd-pv, predict, clip).

Step order, which the MPI runtime's deterministic mode reproduces:

1. Agent ``i``'s iteration ``k`` lasts ``f_i(k)`` units of simulated time (its slowdown for that
   iteration, :meth:`~pcasgd.delays.DelayModel.step_slowdown`; synchronous modes give every
   agent the slowest agent's, and every agent reads fresh snapshots).
2. At each time point, first every agent starting an iteration computes its gradient at its
   current parameters and publishes the snapshot ``(x_i, g_i, k)``, stamped with the time and
   its step period (the mean of its last durations), into its ring; agents are taken in rank
   order.
3. Then each of them, in rank order, reads every in-neighbour ``j`` of the topology at ``k``
   (:func:`~pcasgd.protocol.reads.gather_reads`): the snapshot stamped
   ``s = max(0, latest_j - lag(i, j, k))``, with staleness ``tau = max(0, k - s)`` and its ages at
   this time, and applies its update at the epoch of the run's progress it knows.

A ring keeps each agent's last ``max_lag + 1`` snapshots, so an injected lag is exact.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

import torch
from torch import Tensor

from pcasgd.algorithms.consensus import ConsensusAgent, Snapshot
from pcasgd.engine import EngineResult, EngineRun, check_finite, clock_for
from pcasgd.protocol.ages import StepPeriod
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
        state = run.resume
        agents, rings, next_iteration = state["agents"], state["rings"], state["next_iteration"]
        start_times, periods, progress = state["start_times"], state["periods"], state["progress"]
    else:
        agents = [ConsensusAgent(config, run.initial_params, segments) for _ in range(n)]
        rings = [SnapshotRing(delays.max_lag + 1) for _ in range(n)]
        next_iteration, start_times, progress = [0] * n, [0.0] * n, [0] * n
        periods = [StepPeriod() for _ in range(n)]
    clock = clock_for(run)

    def duration(i: int, k: int) -> float:
        if config.synchronous:
            return max(delays.step_slowdown(j, k) for j in range(n))
        return delays.step_slowdown(i, k)

    def read(j: int, lag: int) -> Snapshot:
        return rings[j].behind_newest(lag)

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        params = [agent.params for agent in agents]
        return params, torch.stack(params).mean(dim=0), list(next_iteration)

    def state() -> dict:
        return {
            "agents": agents,
            "rings": rings,
            "next_iteration": next_iteration,
            "start_times": start_times,
            "periods": periods,
            "progress": progress,
        }

    while True:
        time = min(start_times)
        if time >= clock.budget:
            break
        clock.advance(time, view, state=state)
        group = [i for i in range(n) if start_times[i] == time]
        grads, lasts = {}, {}
        for i in group:
            k, agent = next_iteration[i], agents[i]
            lasts[i] = duration(i, k)  # drawn once: a transient slowdown seeds a generator per call
            periods[i].add(lasts[i])
            grads[i], loss = oracle(i, agent.params)
            clock.stats.add_loss(loss)
            displacement = agent.last_step if config.publishes_displacement else None
            progress[i] = max(progress[i], k)
            snapshot = Snapshot(agent.params, grads[i], k, time, periods[i].period, progress[i], displacement)
            rings[i].publish(snapshot)
        for i in group:
            k = next_iteration[i]
            gathered = gather_reads(i, k, schedule.at(k), config, delays, read, time, periods[i].period)
            progress[i] = max(progress[i], gathered.progress)
            epoch = progress[i] / run.iterations_per_epoch
            report = agents[i].step(grads[i], gathered.reads, gathered.self_weight, epoch)
            check_finite(agents[i].params, f"agent {i}", k)
            clock.record_staleness(report.staleness)
            clock.record_ages(report.ages)
            if report.decision in ("predict", "clip"):
                clock.stats.add_predict_share(report.predict_share)
            next_iteration[i] += 1
            start_times[i] = time + lasts[i]
    clock.finish(view)
    params, reference, iterations = view()
    decisions: Counter[str] = Counter()
    for agent in agents:
        decisions.update(agent.decisions)
    return EngineResult(params, reference, iterations, clock.total_staleness, decisions, clock.budget, clock.total_ages)
