"""Simulator engine for the collective modes (ssgd, odsgd).

Every agent moves in lock-step; iteration ``t`` starts at ``sum over u < t of max_i f_i(u)``
(:class:`~pcasgd.protocol.pacing.LockStepTime`: the slowest rank sets the pace). The allreduce is the mean over agents.

Both protocols wait for their peers, so an injected lag costs them time (not modelled here
beyond the slowest rank's pace), never staleness.

* ``ssgd``: gradients at the shared weights, mean, one momentum step; staleness 0.
* ``odsgd``: per iteration, each agent's gradient at its local weights, and the reductions as
  :mod:`pcasgd.protocol.one_step_delay` orders them (the MPI runtime follows the same queue).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from pcasgd.algorithms.collective import GlobalSGD, OneStepDelayAgent
from pcasgd.engine import EngineResult, EngineRun, EpochClock, GradientOracle, check_finite, clock_for
from pcasgd.protocol.one_step_delay import ReductionQueue, complete_reductions, one_step_delay_step
from pcasgd.protocol.pacing import LockStepTime


def _mean_gradient(oracle: GradientOracle, clock: EpochClock, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    grads = []
    for agent, agent_params in enumerate(params):
        grad, loss = oracle(agent, agent_params)
        clock.stats.add_loss(loss)
        grads.append(grad)
    return torch.stack(grads).mean(dim=0), grads


def simulate_collective(run: EngineRun, agents: int) -> EngineResult:
    config, delays, oracle, initial_params = run.config, run.delays, run.oracle, run.initial_params
    delays.check_fits(agents)
    starts = LockStepTime(delays.step_slowdown, agents)
    clock = clock_for(run)
    resumed = run.resume or {}
    iteration = resumed.get("iteration", 0)
    if config.mode == "ssgd":
        shared = resumed["shared"] if resumed else GlobalSGD(config, initial_params)

        def view() -> tuple[list[Tensor], Tensor, list[int]]:
            return [shared.params] * agents, shared.params, [iteration] * agents

        while starts.start(iteration) < clock.budget:
            clock.advance(starts.start(iteration), view, state=lambda t=iteration: {"shared": shared, "iteration": t})
            mean, _ = _mean_gradient(oracle, clock, [shared.params] * agents)
            shared.apply(mean, clock.epoch_at(starts.start(iteration)))
            check_finite(shared.params, "the shared weights", iteration)
            clock.record_staleness([0] * agents)
            iteration += 1
        clock.finish(view)
        return EngineResult(
            [shared.params] * agents,
            shared.params,
            [iteration] * agents,
            clock.total_staleness,
            Counter(),
            clock.budget,
        )

    peers = resumed["peers"] if resumed else [OneStepDelayAgent(config, initial_params) for _ in range(agents)]
    queue: ReductionQueue[Tensor] = ReductionQueue(config, resumed.get("in_flight"))

    def state() -> dict:
        return {"peers": peers, "in_flight": list(queue.in_flight), "iteration": iteration}

    def view() -> tuple[list[Tensor], Tensor, list[int]]:
        return [peer.local_params for peer in peers], peers[0].global_params, [iteration] * agents

    def identity(mean: Tensor, _started: int) -> Tensor:
        return mean

    while starts.start(iteration) < clock.budget:
        clock.advance(starts.start(iteration), view, state=state)
        epoch = clock.epoch_at(starts.start(iteration))
        mean, grads = _mean_gradient(oracle, clock, [peer.local_params for peer in peers])
        for staleness in one_step_delay_step(peers, grads, queue, iteration, mean, identity, epoch):
            clock.record_staleness([staleness] * agents)
        check_finite(peers[0].global_params, "the global weights", iteration)
        iteration += 1
    completed = complete_reductions(peers, queue.drain(), identity, clock.epoch_at(starts.start(iteration)))
    check_finite(peers[0].global_params, "the global weights", iteration)
    for _ in range(completed):
        clock.record_staleness([queue.latency] * agents)
    clock.finish(view)
    local, reference, iterations = view()
    return EngineResult(local, reference, iterations, clock.total_staleness, Counter(), clock.budget)
