"""The one recovery seam of a ``--fault-tolerant`` run: every runtime that survives a death
(decentralized, parameter server, Horovod Elastic) keeps its world changes here.

:class:`Recovery` owns what is the same whatever survives:

* the **identity** of each rank (its rank in the world it started in, which names its data
  shard and its metrics) and the world now (``ids``: the identity of each current rank);
* the **verdict** on the ranks lost (:meth:`Recovery.agree` for the MPI runtimes: ULFM's revoke
  and shrink; :meth:`Recovery.lose` for a runtime that learns the survivors another way);
* **ending a declared-dead process** that still exists: Open MPI's failure detector (its
  heartbeats, armed by :func:`pcasgd.runtime.launch.failure_detector_settings`) declares a
  stopped (SIGSTOP) or frozen rank dead after ``--deadline`` seconds, and the survivors go on
  without it; but mpirun waits for every process, so a survivor that can reach the process (the
  same kernel and process namespace: one host, or the test bed's hosts) kills it;
* the **event log**: an event is complete once the first step after it is taken; only then is it
  reported (one line of ``events.jsonl`` on the recording rank). Deaths can follow each other
  faster than a step: a second recovery before the first one's first step leaves both waiting,
  and that step completes both (the time from each death to training again is what the event
  measures). A recovery after which this rank takes no step (another rank had finished the run
  meanwhile) is reported at the end with ``first_step_at`` null;
* the **line** that says what happened, printed once, by rank 0 of the new world;
* the world **growing back** (``--rejoin``): :meth:`Recovery.grew` adds the replacements to the
  world and to the event of the death they replace.

What each runtime rebuilds on the new world (graph, windows, server's worker list, Horovod's
rings) is the runtime's own: it calls the seam and then rebuilds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcasgd import log
from pcasgd.errors import TrainingFailedError

LOG = log.get("recovery")


@dataclass(frozen=True)
class ProcessIdentity:
    """Enough to find a rank's process again, and never another: the kernel (boot id), the
    process namespace, the pid and the process's start time (pids are reused)."""

    boot: str
    namespace: str
    pid: int
    started: str

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            namespace = os.readlink(f"/proc/{pid}/ns/pid")
            # the start time is field 22 of stat; the command name before it may hold spaces
            started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            return None
        return cls(boot, namespace, pid, started)

    def end(self) -> bool:
        """SIGKILL this process if it still runs where this process can reach it; whether it did."""
        mine = ProcessIdentity.of(os.getpid())
        reachable = mine is not None and (mine.boot, mine.namespace) == (self.boot, self.namespace)
        if not reachable or ProcessIdentity.of(self.pid) != self:
            return False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def lost_ranks(identity: int, before: list[int], now: list[int], how: str) -> list[int]:
    """The ranks of ``before`` missing from ``now`` (first ranks, in order), as rank ``identity``
    sees them after a recovery. Rank 0 writes the run's files: if it is gone (``how``: how it was
    lost), the survivors stop with a message."""
    lost = sorted(set(before) - set(now))
    if now[0] != 0:
        raise TrainingFailedError(
            f"rank {identity}: rank 0, which records the run, {how} (lost: ranks {lost}); the survivors stop "
            "(--fault-tolerant survives the loss of any rank but 0; every rank's last checkpoint is in the run "
            "directory, for --resume)"
        )
    return lost


class Recovery:
    """One rank's view of its world and of every recovery so far.

    ``identity``: this rank's first rank; ``size``: the first world's; ``report``: the recording
    rank's callback for a complete event (None elsewhere); ``processes``: each first rank's
    process (gathered at the start), for ending a declared-dead one that still runs."""

    def __init__(
        self,
        identity: int,
        size: int,
        report: Callable[[dict[str, Any]], None] | None,
        processes: list[ProcessIdentity | None] | None = None,
    ) -> None:
        self.identity = identity
        self.ids = list(range(size))
        self.events: list[dict[str, Any]] = []
        self.report = report
        self._processes = processes or []
        self._waiting: list[dict[str, Any]] = []  # recovered from, no step taken since

    @classmethod
    def on(cls, comm: Any, report: Callable[[dict[str, Any]], None] | None, deadline: Any, fault_tolerant: bool):
        """The recovery of this rank of MPI's ``comm`` (collective: under ``fault_tolerant`` the
        ranks exchange their process identities)."""
        processes = None
        if fault_tolerant:
            with deadline.guard("exchanging the ranks' process identities (collective)"):
                processes = comm.allgather(ProcessIdentity.of(os.getpid()))
        return cls(comm.Get_rank(), comm.Get_size(), report, processes)

    def agree(self, comm: Any) -> tuple[Any, list[int], float]:
        """ULFM: revoke ``comm`` and agree with the survivors on who is left; return their
        communicator, the old rank of each of its ranks, and when the failure was noticed. The
        old communicator is abandoned (freeing it would wait for the dead)."""
        from pcasgd.runtime.faults import abandon, shrink

        noticed = time.time()
        survivors, alive = shrink(comm)
        abandon(comm)
        return survivors, alive, noticed

    def lose(
        self,
        world: list[int],
        iteration: int,
        noticed: float,
        topology: str,
        how: str,
        goes_on: str,
        recording_may_die: bool = False,
    ) -> dict[str, Any]:
        """The world is now ``world`` (first ranks, in the new order) from ``iteration`` on: log
        the event, end the lost processes that still run here, and (recording rank) say so.
        ``recording_may_die``: the runtime passes recording to the lowest survivor (which set
        :attr:`report`); otherwise the loss of rank 0 ends the survivors. Rank 0 of the new world
        (``world[0]``) prints the line."""
        if recording_may_die:
            lost = sorted(set(self.ids) - set(world))
        else:
            lost = lost_ranks(self.identity, self.ids, world, how)
        for identity in lost:
            if identity < len(self._processes) and self._processes[identity] is not None:
                self._processes[identity].end()
        self.ids = list(world)
        event = {
            "lost": lost,
            "world": list(world),
            "iteration": iteration,
            "noticed_at": noticed,
            "recovered_at": time.time(),
            "first_step_at": None,
            "topology": topology,
        }
        self.events.append(event)
        self._waiting.append(event)
        if world[0] == self.identity:
            took = event["recovered_at"] - noticed
            LOG.warning(f"rank(s) {lost} {how}; {goes_on} (noticed and recovered in {took:.2f} s)")
        return event

    def grew(
        self,
        world: list[int],
        newcomers: list[int],
        topology: str,
        processes: list[tuple[int, Any]],
        since: float,
        noticed: float,
        iteration: int,
    ) -> None:
        """Replacements for ``newcomers`` joined (``--rejoin``, runtime/rejoin.py): the world is
        ``world`` (agents, in rank order) over ``topology`` from now on; ``processes``: each rank's
        (agent, process), gathered on the grown world; ``since``: when the survivors began to
        spawn; ``noticed``: when the death the newcomers replace was noticed; ``iteration``: where
        this rank goes on. That death's event
        says so; a newcomer's own log starts with an event of its joining, which it reports as a
        line at its first step."""
        for identity, process in processes:
            self._processes.extend([None] * (identity + 1 - len(self._processes)))
            self._processes[identity] = process
        self.ids = list(world)
        now = time.time()
        grown = {"rejoined": list(newcomers), "world_after_rejoin": list(world), "rejoined_at": now}
        grown.update(topology_after_rejoin=topology, spawn_seconds=now - since)
        if self.identity in newcomers:
            event = {"lost": [], "world": list(world), "iteration": iteration, "noticed_at": noticed, **grown}
            self.events.append(event)
            self._waiting.append(event)
            return
        self.events[-1].update(grown)
        if world[0] == self.identity:
            LOG.warning(
                f"rank(s) {newcomers} replaced by new processes: {len(world)} ranks go on over '{topology}' "
                f"(spawned, joined and healed in {now - since:.2f} s)"
            )

    def stepped(self) -> None:
        """A step was taken: stamp and report the recoveries that waited for one."""
        if not self._waiting:
            return
        now = time.time()
        for event in self._waiting:
            event["first_step_at"] = now
            if self.identity in event.get("rejoined", []) and not event["lost"]:  # this process joined
                LOG.info(
                    f"rank {self.identity} (a replacement) took its first step at iteration {event['iteration']}, "
                    f"{now - event['noticed_at']:.2f} s after the death it replaces was noticed"
                )
            if self.report is not None:
                self.report(dict(event))
        self._waiting = []

    def ended(self) -> None:
        """Training is over for this rank: report the recoveries no step followed, as they are."""
        for event in self._waiting:
            if self.report is not None:
                self.report(dict(event))
        self._waiting = []


@dataclass
class DecentralizedWorld:
    """What a decentralized rank reads and mixes over (the engine's loop and
    :class:`pcasgd.DecentralizedOptimizer` hold one each): after a death :meth:`survive` rebuilds
    it the same way for both."""

    comm: Any  # MPI.Comm
    schedule: Any  # pcasgd.topology.Schedule
    exchange: Any  # pcasgd.runtime.exchange.NeighbourExchange
    progress: Any  # pcasgd.transport.progress.MpiProgress
    agent: Any  # pcasgd.algorithms.consensus.ConsensusAgent

    def survive(self, recovery: Recovery, deadline: Any, progress_thread: bool) -> tuple[list[int], float]:
        """Agree with the survivors on who is left (twice the deadline: a survivor may be stuck in
        a window operation until its own watchdog ends it, as the host-mates of a host's lowest
        rank are, docs/mpi.md), then the graph over them, the exchange over the windows as they
        are (an agent's number is its window rank), and the agent's neighbours renumbered. Returns
        the first ranks of the new world and when the failure was noticed; the caller then logs
        it with :meth:`Recovery.lose`."""
        from pcasgd.topology import survivors
        from pcasgd.transport.progress import MpiProgress

        self.progress.close()
        agreeing = "agreeing with the survivors on which ranks died (MPI_Comm_shrink)"
        with deadline.guard(agreeing, 2 * deadline.seconds):
            self.comm, alive, noticed = recovery.agree(self.comm)  # alive: old ranks, in new order
        ids = [recovery.ids[rank] for rank in alive]
        self.schedule = survivors(self.schedule, alive)
        self.exchange.enter(self.comm, self.schedule, ids)
        self.progress = MpiProgress(self.comm, thread=progress_thread)
        self.agent.renumber_neighbours({old: new for new, old in enumerate(alive)})
        return ids, noticed
