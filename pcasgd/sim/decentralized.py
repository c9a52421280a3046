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
   (:func:`~pcasgd.protocol.reads.fetch_reads`): the snapshot stamped
   ``s = max(0, latest_j - lag(i, j, k))``, with staleness ``tau = max(0, k - s)`` and its ages at
   this time, and applies its update at the epoch of the run's progress it knows.

``--overlap`` (ALGORITHMS.md, "Revision 2"): a read is issued at the start of the iteration,
before the gradient exists, so the snapshot an agent publishes carries its previous gradient,
and a read does not see the snapshots published at that same instant (``latest_j`` is the newest
published before it; stamp 0 at the start): in lock-step every read is then one step older,
as the MPI runtime's overlapped reads, and ``dsgd`` mixes exactly ``x_j^(k-1)``.

A ring keeps each agent's last ``max_lag + 2`` snapshots, so an injected lag is exact.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

import torch
from torch import Tensor

from pcasgd.algorithms.consensus import ConsensusAgent, Snapshot
from pcasgd.engine import EngineResult, EngineRun, check_finite, clock_for
from pcasgd.protocol.ages import Latest, StepPeriod
from pcasgd.protocol.reads import assemble_reads, fetch_reads
from pcasgd.topology import Schedule


class SnapshotRing:
    """The last ``capacity`` snapshots one agent published, looked up by stamp."""

    def __init__(self, capacity: int) -> None:
        self._snapshots: deque[Snapshot] = deque(maxlen=capacity)

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshots.append(snapshot)

    def read(self, lag: int, before: float | None = None) -> tuple[Snapshot, Latest]:
        """The snapshot ``lag`` stamps behind the newest (stamp 0 at the least), or the oldest kept,
        and that newest; ``before``: the newest is the last published before that time (or the
        oldest kept, if none was)."""
        snapshots = self._snapshots
        newest = len(snapshots) - 1
        while before is not None and newest > 0 and snapshots[newest].published >= before:
            newest -= 1
        latest = snapshots[newest]
        return snapshots[max(0, newest - lag)], Latest(latest.stamp, latest.published, latest.period)


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
        rings = [SnapshotRing(delays.max_lag + 2) for _ in range(n)]
        next_iteration, start_times, progress = [0] * n, [0.0] * n, [0] * n
        periods = [StepPeriod() for _ in range(n)]
    clock = clock_for(run)

    def duration(i: int, k: int) -> float:
        if config.synchronous:
            return max(delays.step_slowdown(j, k) for j in range(n))
        return delays.step_slowdown(i, k)

    def read(j: int, lag: int) -> tuple[Snapshot, Latest]:
        return rings[j].read(lag, before=time if config.overlap else None)

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
            published_grad = agent.last_grad if config.overlap else grads[i]
            if "grad" not in config.snapshot_vectors:  # as in an MPI window: nobody reads it
                published_grad = None
            snapshot = Snapshot(agent.params, published_grad, k, time, periods[i].period, progress[i], displacement)
            rings[i].publish(snapshot)
        for i in group:
            k = next_iteration[i]
            topology = schedule.at(k)
            fetched = fetch_reads(i, k, topology, config, delays, read)
            gathered = assemble_reads(i, k, topology, fetched, time, periods[i].period)
            progress[i] = max(progress[i], gathered.progress)
            epoch = progress[i] / run.iterations_per_epoch
            report = agents[i].step(grads[i], gathered.reads, gathered.self_weight, epoch)
            check_finite(agents[i].params, f"agent {i}", k)
            clock.record_staleness(report.staleness)
            clock.record_ages(report.ages)
            clock.record_predictions(report.prediction_ratios)
            if report.decision in ("predict", "clip"):
                clock.stats.add_predict_share(report.predict_share)
            next_iteration[i] += 1
            start_times[i] = time + lasts[i]
    clock.finish(view)
    params, reference, iterations = view()
    decisions: Counter[str] = Counter()
    for agent in agents:
        decisions.update(agent.decisions)
    return EngineResult(
        params,
        reference,
        iterations,
        clock.total_staleness,
        decisions,
        clock.budget,
        clock.total_ages,
        prediction_ratios=clock.total_predictions,
    )
