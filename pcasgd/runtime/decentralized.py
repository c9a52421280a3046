"""The decentralized modes on MPI: one agent per rank, weights exchanged through RMA windows.

Per iteration ``k`` a rank computes its gradient at its parameters, publishes ``(x, g, k)`` in
its window, reads its in-neighbours' snapshots, and applies the same
:class:`~pcasgd.algorithms.consensus.ConsensusAgent` update as the simulator.

* **asynchronous** (default): no rank waits for another. A read returns the neighbour's newest
  snapshot (``lag`` behind it when a delay spec injects one) and staleness is measured from the
  stamps. ``dsgd`` alone waits, neighbour by neighbour, for a snapshot stamped ``k``. A
  ``straggler`` term makes a rank sleep ``(f - 1)`` times its previous iteration's duration, so
  its iterations take about ``f`` times as long. The run ends when a rank finishes ``epochs``
  epochs of iterations: it adds its end-of-run word to every live rank's control window (each
  rank reads its own, locally) and the others stop at their next iteration, so faster ranks do
  more iterations than slower ones (a ``dsgd`` rank waiting for a neighbour that has stopped
  stops too, without that iteration's update).
* **deterministic**: every rank runs ``epochs * iterations_per_epoch`` iterations in lock-step
  (a barrier after each publish) with the injected lags read from each ring, which reproduces the
  simulator's step order and therefore its weights.

Rank 0 records the per-epoch view: in deterministic mode from a gather (as the simulator's),
in asynchronous mode by reading every rank's newest snapshot and running totals remotely,
without stopping anyone.

``fault_tolerant`` (asynchronous mode, under ULFM: :mod:`pcasgd.runtime.faults`): when a rank
dies, the survivors notice, shrink the communicator, rebuild the graph over themselves
(:func:`pcasgd.topology.survivors`) and go on from the iteration each had reached, over the
windows they started with: those stay, addressed by each agent's first rank, since a rank that
died while the survivors created new windows crashed them inside Open MPI 5.0.11. After a
failure the windows are never freed (freeing is collective over the dead ranks too). The dead
agent's data shard is not trained on any more. Each agent keeps its identity (its rank in the
world it started in, its window rank) for its data shard, its straggler term and the metrics.
If rank 0, which records the run, dies, the lowest survivor records on in the same files.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from mpi4py import MPI
from torch import Tensor

from pcasgd import log
from pcasgd.algorithms.consensus import ConsensusAgent, Snapshot
from pcasgd.engine import EngineResult, EngineRun, EpochStats, add_ages_by_source, check_finite, make_due_records
from pcasgd.errors import ConfigError, NeighbourFinishedError, ProcessFailedError
from pcasgd.protocol.pacing import StragglerPacing
from pcasgd.runtime import rejoin
from pcasgd.runtime import totals as header_totals
from pcasgd.runtime.exchange import ExchangeEndpoint, MpiOptions
from pcasgd.runtime.faults import abandon, is_process_failure, notice_failures
from pcasgd.runtime.recording import BEFORE_REJOIN, BEFORE_RESIZE, RankState, Recorder
from pcasgd.runtime.recovery import DecentralizedWorld, ProcessIdentity, Recovery
from pcasgd.topology import Schedule, survivors
from pcasgd.transport.deadline import Deadline
from pcasgd.transport.windows import FLAG_FINISHED, ControlWindow

if TYPE_CHECKING:
    import numpy as np

LOG = log.get("decentralized")


def _moved(snapshot: Snapshot, move: Callable[[Tensor], Tensor], published: float) -> Snapshot:
    """``snapshot`` with ``move`` applied to its vectors and its publish time set to ``published``.

    A checkpoint keeps CPU copies and the publish time relative to the checkpoint's time (clocks
    differ between the run that saves and the one that resumes)."""
    displacement = None if snapshot.displacement is None else move(snapshot.displacement)
    params, grad = move(snapshot.params), None if snapshot.grad is None else move(snapshot.grad)
    return replace(snapshot, params=params, grad=grad, displacement=displacement, published=published)


class DecentralizedRank:
    """One rank's loop: build it on every rank, call :meth:`train` (rank 0 gets the result)."""

    def __init__(
        self,
        comm: MPI.Comm,
        run: EngineRun,
        schedule: Schedule,
        segments: Sequence[int] | None,
        options: MpiOptions,
        deadline: Deadline,
    ) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        if schedule.size != self.size:
            raise ConfigError(f"the topology has {schedule.size} agents but the MPI world has {self.size} ranks")
        if options.deterministic and run.delays.has_slowdown:
            raise ConfigError("--deterministic runs in lock-step: straggler terms need the asynchronous mode")
        if options.deterministic and options.fault_tolerant:
            raise ConfigError("--fault-tolerant needs the asynchronous mode: lock-step ranks wait for the dead one")
        # This agent's name for good: its rank in the world it started in (its data shard, its
        # straggler term, its name in the metrics); ``ids`` names the agent of each current rank.
        # A process started to replace a lost rank (--rejoin) takes the lost agent's name.
        joining = None if options.replacement is None else rejoin.joining(comm)
        self.agent_id = self.rank if joining is None else joining.identities[self.rank]
        if joining is None:
            report = run.world_change if self.rank == 0 else None
            self.recovery = Recovery.on(comm, report, deadline, options.fault_tolerant)
        else:
            self.recovery = Recovery(self.agent_id, self.size, None)
        self.run = run
        self.first_schedule = schedule  # the graph over every agent: a grown world is rebuilt from it
        self.schedule = schedule
        self.options = options
        self.config = run.config
        self.agent = ConsensusAgent(run.config, run.initial_params, segments)
        self.deadline = deadline
        self.recorder = Recorder(comm, run, deadline)
        if joining is None:
            self._open_world(comm)
        self.epoch_stats = EpochStats()
        self.overall = EpochStats()
        self.staleness: Counter[int] = Counter()
        self.ages: dict[int, Counter[float]] = {}  # per in-neighbour agent, over the run
        # per agent: its running totals when rank 0 last recorded (None: not known)
        self._last_totals: dict[int, dict[str, float] | None] = {j: {} for j in self.ids}
        # lock-step ranks wait for each other: a straggler's slowness then costs everyone time alike
        slowdown = (lambda _: 1.0) if options.deterministic else partial(run.delays.step_slowdown, self.agent_id)
        self.pacing = StragglerPacing(slowdown, lambda seconds: self.progress.sleep(seconds))
        self.k = 0  # the iteration this rank is at
        self.stopped = False  # this rank has left the training loop (the run is over for it)
        self.records = run.records()
        self._due: list[tuple[float, bool]] = []  # records due and not yet made (a failure may interrupt one)
        self._passed: list[float] = []  # the records this rank has passed (made, if it recorded them)
        if joining is not None:
            self._grow(comm, joining, time.time())
            return
        if run.resume is not None:
            self._restore(run.resume)
        # Every rank, resumed or not: neighbours read restored snapshots only after this.
        deadline.wait(comm.Ibarrier(), "the barrier after setting up the windows (collective)")

    def _open_world(self, comm: MPI.Comm) -> None:
        """This rank's windows, progress helper and exchange on ``comm`` (collective)."""
        run, deadline = self.run, self.deadline
        endpoint = ExchangeEndpoint(
            comm, self.agent.params, self.schedule, run.delays, run.config, self.options, deadline, header_totals.LENGTH
        )
        self.window, self.progress, self.exchange = endpoint.window, endpoint.progress, endpoint.exchange
        with deadline.guard("allocating the control window (collective)"):
            self.control = ControlWindow(comm)

    @property
    def ids(self) -> list[int]:
        """The agent (first rank) of each current rank."""
        return self.recovery.ids

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> EngineResult | None:
        recovering = False
        try:
            while True:
                try:
                    if recovering:  # a rank may die during a recovery too: then it starts over
                        self._recover()
                        recovering = False
                    return self._train()
                except (ProcessFailedError, MPI.Exception) as error:
                    if not (self.options.fault_tolerant and is_process_failure(error, self.comm)):
                        raise
                    recovering = True
        finally:
            self.progress.close()
            self.exchange.close()

    def _train(self) -> EngineResult | None:
        run = self.run
        budget = run.epochs * run.iterations_per_epoch
        while True:
            if not self.stopped:  # records come due on the run's progress (the fastest rank's iterations)
                self._due.extend(self.records.due(self.k if self.options.deterministic else self.exchange.progress))
            make_due_records(self._due, lambda epoch, is_epoch: self._epoch(epoch, self.k, is_epoch))
            if self.stopped:
                break
            if self.k >= budget:
                self.stopped = True
            elif not self.options.deterministic and self._another_rank_finished():
                self._stop_early(budget)
            else:
                try:
                    self._iterate(self.k)
                except NeighbourFinishedError:  # dsgd: the neighbour it waits for has stopped; the run is over
                    self._stop_early(budget)
                    continue
                self.k += 1
                self.recovery.stepped()
        if not self.options.deterministic:
            # every rank that stops says so, in the window of every rank alive
            with self.deadline.guard("signalling the end of training to the other ranks"):
                self.control.add_finished(self.ids)
        k = self.k
        self.window.set_flags(FLAG_FINISHED, self._totals(k))
        self.deadline.wait(self.comm.Ibarrier(), "the end-of-training barrier")
        result = self._finish(k)
        # Freed only after a clean run: a failed rank ends the job (the CLI aborts it), and a
        # collective MPI_Win_free would wait for ranks that may be dead or stopped; the windows of
        # a run that lost ranks span the dead ones.
        if self.recovery.events:
            abandon(self.window, self.control)
        else:
            with self.deadline.guard("freeing the windows (collective)"):
                self.window.close()
                self.control.close()
        return result

    def _iterate(self, k: int) -> None:
        """Iteration ``k``: publish and read (before the gradient with overlap, so that the reads
        fly while it is computed; after it otherwise), then mix."""
        run, rank = self.run, self.rank
        agent = self.agent
        overlap = self.config.overlap
        with self.pacing.work(k):  # the work of the iteration, not the sleep, is what is scaled
            header = self._totals(k)
            displacement = agent.last_step if self.config.publishes_displacement else None
            if overlap:  # the snapshot carries the previous gradient: this one is not computed yet
                self.exchange.start(k, agent.params, agent.last_grad, header, displacement)
            grad, loss = run.oracle(self.agent_id, agent.params)
            self.progress.poke()  # serve neighbours' reads that waited on this rank during the compute
            if self.options.fault_tolerant:
                notice_failures(self.comm)
            self.epoch_stats.add_loss(loss)
            self.overall.add_loss(loss)
            if not overlap:
                self.exchange.start(k, agent.params, grad, header, displacement)
            gathered = self.exchange.finish()
            epoch = gathered.progress / run.iterations_per_epoch
            report = agent.step(grad, gathered.reads, gathered.self_weight, epoch)
            check_finite(agent.params, f"rank {rank}", k)
            ages = [age for _, age in report.ages]
            for stats in (self.epoch_stats, self.overall):
                stats.add_staleness(report.staleness)
                stats.add_ages(ages)
                stats.add_prediction_ratios(report.prediction_ratios)
                if report.decision in ("predict", "clip"):
                    stats.add_predict_share(report.predict_share)
            self.staleness.update(report.staleness)
            add_ages_by_source(self.ages, [(self.ids[j], age) for j, age in report.ages])

    # -- surviving a dead rank ------------------------------------------------------------------

    def _recover(self) -> None:
        """A rank died: agree with the survivors on who is left, rebuild the graph over them and
        go on over the windows as they are (the caller re-enters the loop at the iteration this
        rank reached). Only the shrink talks: no window is made, no other message sent."""
        world = DecentralizedWorld(self.comm, self.schedule, self.exchange, self.progress, self.agent)
        ids, noticed = world.survive(self.recovery, self.deadline, self.options.progress_thread)
        self.comm, self.schedule, self.progress = world.comm, world.schedule, world.progress
        lost = sorted(set(self.ids) - set(ids))
        self.recorder.comm = self.comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        for agent in lost:
            self.recorder.lost_samples[agent] = int((self._last_totals.get(agent) or {}).get("samples", 0))
        self._last_totals = {agent: self._last_totals.get(agent, {}) for agent in ids}
        recorder_died = self.ids[0] in lost  # the ids are still the old world's
        if recorder_died and self.rank == 0:
            self.recovery.report = self.run.world_change
        goes_on = f"{len(ids)} ranks go on from iteration {self.k} over '{self.schedule.name}'"
        self.recovery.lose(ids, self.k, noticed, self.schedule.name, "died", goes_on, recording_may_die=True)
        if recorder_died and self.rank == 0:
            self._take_over_recording(lost[0])
        if self.options.replacement is not None and lost:  # none lost: a newcomer died before it joined
            self._replace(lost, noticed)

    # -- the world grows back (--rejoin) --------------------------------------------------------

    def _replace(self, lost: list[int], noticed: float) -> None:
        """Start a replacement for each agent of ``lost`` and grow the world with them (the
        survivors' side; runtime/rejoin.py). If MPI cannot start them, the run goes on without."""
        since = time.time()
        command = list(self.options.replacement)
        try:
            with self.deadline.guard(f"starting replacements for ranks {lost} (MPI_Comm_spawn, collective)"):
                spawned = rejoin.spawn_replacements(self.comm, command, self.ids, lost, self.first_schedule, noticed)
        except MPI.Exception as error:
            if is_process_failure(error, self.comm):
                raise
            if self.rank == 0:
                LOG.warning(f"no replacement for ranks {lost} could start ({error}); {self.size} ranks go on")
            return
        self._grow(*spawned, since)

    def _grow(self, merged: MPI.Comm, join, since: float) -> None:
        """The world grows back (--rejoin): collective over ``merged``, the survivors (first, in their
        order) and the newcomers that replace the agents of ``join.newcomers``. Each newcomer is
        healed from its survivor (weights, momentum, iteration); every rank then makes its windows
        anew over the whole world, addressed by agent as in the first world (the survivors'
        windows span the dead), and the graph is the first one over the agents in their new order.
        The survivors republish the snapshots their window held, so no read finds a gap."""
        deadline, newcomer = self.deadline, self.agent_id in join.healers
        what = "gathering the grown world's processes (collective: a newcomer loads its data and model first)"
        with deadline.guard(what):
            processes = merged.allgather((self.agent_id, ProcessIdentity.of(os.getpid())))
        if newcomer:
            with deadline.guard(f"receiving agent {self.agent_id}'s state from its healer"):
                device = self.run.initial_params.device
                self.agent, self.k, progress = rejoin.receive_heal(merged, join.healers[self.agent_id], device)
            self.agent.start_over_at(self.k)
            self.records.skip_to(progress)  # the records up to here were made before it came
            ring, first_stamp = [], None
        else:
            for agent, healer in join.healers.items():
                if healer == merged.Get_rank():
                    with deadline.guard(f"healing agent {agent}'s replacement"):
                        newcomer_rank = join.identities.index(agent)
                        rejoin.send_heal(merged, newcomer_rank, self.agent, self.k, self.exchange.progress)
            ring, progress = self._own_ring(self.k), self.exchange.progress
            period, first_stamp = self.exchange.period, self.exchange.first_stamp
            self.progress.close()
            self.exchange.close()
            abandon(self.window, self.control)
        with deadline.guard("splitting the grown world by agent (collective)"):
            by_agent = merged.Split(0, self.agent_id)
        self.schedule = survivors(self.first_schedule, join.identities)
        self._open_world(by_agent)  # windows addressed by agent, as the first world's
        self.exchange.enter(merged, self.schedule, join.identities)
        self.exchange.progress, self.exchange.first_stamp = progress, first_stamp
        if not newcomer:
            self.exchange.period = period
            self._republish(ring)
        self.comm, self.rank, self.size = merged, merged.Get_rank(), merged.Get_size()
        self.recorder.comm = merged
        for agent in join.newcomers:  # the lost process's samples stay counted; its replacement counts its own
            lost = self.recorder.lost_samples.pop(agent, 0)
            self.recorder.lost_samples[BEFORE_REJOIN] = self.recorder.lost_samples.get(BEFORE_REJOIN, 0) + lost
            self._last_totals[agent] = None
        self.recovery.grew(
            join.identities, join.newcomers, self.schedule.name, processes, since, join.noticed_at, self.k
        )
        deadline.wait(merged.Ibarrier(), "the barrier after growing the world (collective)")

    def _take_over_recording(self, dead: int) -> None:
        """The recording rank (``dead``) died and this rank is the lowest survivor: it records the
        run from now on, in the same files. The records it had passed and the dead rank had not
        written are made now (with the weights as they are); the others' statistics count from
        now (the dead rank's view of their totals is lost); the samples the dead rank knew of stay
        counted (at least the last record's)."""
        last, recorded = self.run.take_over()
        last = -1.0 if last is None else last
        self.records.skip_to(max(last, 0.0) * self.run.iterations_per_epoch)  # none is made twice
        missed = [(epoch, False) for epoch in self._passed if epoch > last]
        self._due = missed + [(epoch, is_epoch) for epoch, is_epoch in self._due if epoch > last]
        states = self._remote_states(self.k, "taking over the records")
        for agent, state in zip(self.ids, states, strict=True):
            self._last_totals[agent] = state.totals
        alive = sum(state.samples for state in states) + sum(self.recorder.lost_samples.values())
        self.recorder.lost_samples[dead] = max(0, recorded - alive)

    def _totals(self, k: int) -> np.ndarray:
        """What this rank publishes in its header for rank 0's records (runtime/totals.py)."""
        return header_totals.encode(self.overall, k, self.run.oracle.samples)

    # -- what rank 0 records --------------------------------------------------------------------

    def _state(self, k: int) -> RankState:
        totals = header_totals.decode(self._totals(k))
        return RankState(
            self.agent.params,
            self.epoch_stats,
            k,
            int(totals["samples"]),
            totals,
            self.staleness,
            self.agent.decisions,
            self.ages,
            self.overall.prediction_histogram,
        )

    def _epoch(self, epoch: float, k: int, is_epoch: bool) -> None:
        """Record (rank 0) and checkpoint: while this rank is paused, its neighbours' reads of it
        do not age (ALGORITHMS.md, "Revision 2")."""
        with self.exchange.pause():
            if self.options.deterministic:
                states = self.recorder.gather(self._state(k), f"gathering epoch {epoch}")
                if self.rank == 0:
                    self.recorder.fire(epoch, states)
            elif self.rank == 0:
                self._fire_from_windows(epoch, k)
            self.epoch_stats = EpochStats()
            self._passed.append(epoch)
            if is_epoch and self.run.checkpoint is not None:
                self.run.checkpoint(int(epoch), self._checkpoint_state(k, int(epoch)))

    def _fire_from_windows(self, epoch: float, k: int) -> None:
        self.recorder.fire(epoch, self._with_remote_stats(self._remote_states(k, f"the epoch {epoch} metrics")))

    def _another_rank_finished(self) -> bool:
        with self.deadline.guard("reading the end-of-run words in this rank's window"):
            return self.control.finished() > 0

    def _stop_early(self, budget: int) -> None:
        """Asynchronous stop (another rank finished first) before this rank reached every boundary.

        Rank 0 records the boundaries it had not reached with the weights as they are at the stop
        (each record's ``iterations`` says where every rank was), so that every epoch has its
        record; no checkpoint is written for them, as this rank's state is not at that epoch.
        """
        self.stopped = True
        if self.rank == 0:
            self._due.extend((epoch, False) for epoch, _ in self.records.due(budget))

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_state(self, k: int, epoch: int) -> dict:
        """Everything this rank needs to go on from iteration ``k``, its window's ring included;
        the records up to ``epoch`` are made."""
        return {
            "iteration": k,
            "agent": self.agent,
            "overall": self.overall,
            "staleness": self.staleness,
            "ages": self.ages,
            "last_totals": self._last_totals,
            "lost_samples": self.recorder.lost_samples,
            "period": self.exchange.period,
            "progress": self.exchange.progress,
            "ring": self._own_ring(k),
            "recorded": epoch * self.run.iterations_per_epoch,
            "ids": self.ids,
        }

    def _own_ring(self, k: int) -> list[Snapshot]:
        """This rank's snapshots before ``k`` that its window holds, as CPU copies with their publish
        times relative to now (for :meth:`_republish`, in this run or a resumed one)."""
        ring = []
        now = self.exchange.clock.now(k)
        for stamp in range(max(0, k - self.window.slots + 1), k):
            with self.deadline.guard(f"reading this rank's own snapshot {stamp}"):
                snapshot = self.window.read(self.window.rank, newest=stamp).snapshot
            ring.append(_moved(snapshot, lambda v: v.cpu().clone(), snapshot.published - now))
        return ring

    def _republish(self, ring: list[Snapshot]) -> None:
        """Publish the snapshots of :meth:`_own_ring` into this rank's window again."""
        device = self.run.initial_params.device
        now = self.exchange.clock.now(self.k)
        for kept in ring:
            snapshot = _moved(kept, lambda v: v.to(device), kept.published + now)
            with self.deadline.guard(f"republishing snapshot {snapshot.stamp}"):
                self.window.publish(snapshot, self._totals(snapshot.stamp + 1))

    def _restore(self, state: dict) -> None:
        self.k = state["iteration"]
        self.records.skip_to(state["recorded"])
        self.agent = state["agent"]
        self.overall, self.staleness = state["overall"], state["staleness"]
        # Agents lost before the checkpoint are back (this world is whole again): they count their
        # own samples, and rank 0 learns their totals afresh at its next record.
        self._last_totals = {agent: state["last_totals"].get(agent) for agent in self.ids}
        self.recorder.lost_samples = {
            agent: samples for agent, samples in state.get("lost_samples", {}).items() if agent not in self.ids
        }
        self.ages = state["ages"]
        self.exchange.period, self.exchange.progress = state["period"], state["progress"]
        # a restored ring holds k - 1, which overlapped reads may name; a resized state has none
        self.exchange.first_stamp = 0 if state["ring"] else None
        self._republish(state["ring"])

    def _remote_states(self, k: int, why: str) -> list[RankState]:
        """Asynchronous mode: every rank's newest snapshot and totals, read without stopping it."""
        states = [self._state(k)]
        for j in range(1, self.size):
            with self.deadline.guard(f"reading rank {self.ids[j]}'s window for {why}"):
                read = self.window.read(self.ids[j])
            params = read.snapshot.params if read.snapshot is not None else self.run.initial_params
            totals = header_totals.decode(read.values)
            states.append(RankState(params, EpochStats(), int(totals["iterations"]), int(totals["samples"]), totals))
        return states

    def _with_remote_stats(self, states: list[RankState]) -> list[RankState]:
        """Each rank's statistics since rank 0 last looked, from the difference of its running
        totals; none for a rank rank 0 had not looked at since the run resumed (an agent lost
        before the checkpoint: its totals then are not known), only its totals from now on."""
        for j, state in enumerate(states):
            agent = self.ids[j]
            before = self._last_totals.get(agent)
            state.stats = EpochStats() if before is None else header_totals.stats_between(state.totals, before)
            self._last_totals[agent] = state.totals
        return states

    def _finish(self, k: int) -> EngineResult | None:
        states = self.recorder.gather(self._state(k), "gathering the final weights")
        self.recovery.ended()
        if self.rank != 0:
            return None
        if not self.options.deterministic:
            states = self._with_remote_stats(states)
        return replace(self.recorder.result(states), world_changes=self.recovery.events)


def resized_state(state: dict, iteration: int, carried_samples: int) -> dict:
    """One agent's checkpoint (:meth:`DecentralizedRank._checkpoint_state`) carried into a run of
    another size (app/resize.py): its weights, momentum and pace go on at ``iteration``; its ring,
    counters and what it knew of other agents start over. ``carried_samples``: the samples the
    run had trained on before (the recording rank counts them, once)."""
    agent = state["agent"]
    agent.start_over_at(iteration)
    lost = {BEFORE_RESIZE: carried_samples} if carried_samples else {}
    fresh = {"overall": EpochStats(), "staleness": Counter(), "ages": {}, "last_totals": {}, "lost_samples": lost}
    return {**state, **fresh, "iteration": iteration, "progress": iteration, "recorded": iteration, "ring": []}
