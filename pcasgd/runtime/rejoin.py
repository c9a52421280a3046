"""Rejoin in place (``--rejoin``, with ``--fault-tolerant``): the world grows back while it runs.

After the survivors of a death have agreed on who is left (ULFM's shrink), they start one
replacement process per lost rank with ``MPI_Comm_spawn``, running the same ``pcasgd train``
command, and merge with it into one communicator: the survivors first, in their order, then the
newcomers. Each newcomer takes the identity of the agent it replaces (its data shard, its name in
the metrics, its window rank) and is healed from a survivor (the lost agent's first surviving
in-neighbour): that survivor sends its agent (weights, momentum, last step) and iteration, and the
newcomer goes on from there, as a resized run's new agent does. Then every rank makes new windows
over the whole world again (:meth:`pcasgd.runtime.decentralized.DecentralizedRank._grow`).

Why spawn: under ULFM on Open MPI 5.0.11, spawn and merge after a shrink, then a new window
written and read across, held in 50 of 50 tries on one host (``benchmarks/spawn_after_shrink.py``,
docs/mpi.md); the alternative, restarting the whole job at its new size, is ``launch/elastic.sh``.

A newcomer learns that it is one in :func:`joined`, before anything else talks MPI: its own
``MPI.COMM_WORLD`` holds only itself, and the world it trains in is the merged one.
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mpi4py import MPI

from pcasgd.topology import Schedule


@dataclass(frozen=True)
class JoinInfo:
    """What every rank of the merged world knows of the newcomers, from its rank 0.

    ``identities``: the agent (first rank) of each rank of the merged world, survivors first;
    ``healers``: for each newcomer's agent, the merged rank of the survivor that heals it;
    ``noticed_at``: when the death the newcomers replace was noticed (rank 0's clock)."""

    identities: list[int]
    healers: dict[int, int]
    noticed_at: float

    @property
    def newcomers(self) -> list[int]:
        return sorted(self.healers)


def replacement_command(train_argv: list[str]) -> list[str]:
    """The command that starts a replacement: the same ``pcasgd train`` with the same flags."""
    return [sys.executable, "-m", "pcasgd.cli", "train", *train_argv]


def healers_of(lost: list[int], survivors: list[int], first_schedule: Schedule) -> dict[int, int]:
    """For each lost agent, the rank (among ``survivors``, agents in their order) of the survivor
    that heals it: its first surviving in-neighbour in the first graph, else the first survivor."""
    graph = first_schedule.at(0)
    healers = {}
    for agent in lost:
        alive = [survivors.index(j) for j in graph.in_neighbours(agent) if j in survivors]
        healers[agent] = alive[0] if alive else 0
    return healers


def spawn_replacements(
    comm: MPI.Comm, command: list[str], survivors: list[int], lost: list[int], first_schedule: Schedule, noticed: float
) -> tuple[MPI.Comm, JoinInfo]:
    """The survivors (``comm``, its agents ``survivors``) start a replacement for each of ``lost``
    and merge with them; returns the merged communicator and what its ranks know of the
    newcomers. Collective over ``comm``; the newcomers' side is :func:`joined`."""
    info = MPI.Info.Create()
    info.Set("wdir", os.getcwd())  # the run directory may be given relative to it
    try:
        intercomm = comm.Spawn(command[0], command[1:], maxprocs=len(lost), info=info, root=0)
    finally:
        info.Free()
    merged = intercomm.Merge(high=False)
    merged.Set_errhandler(MPI.ERRORS_RETURN)
    join = JoinInfo(survivors + sorted(lost), healers_of(sorted(lost), survivors, first_schedule), noticed)
    return merged, merged.bcast(join if merged.Get_rank() == 0 else None, root=0)


_joined: list[tuple[MPI.Comm, JoinInfo]] = []


def joined() -> tuple[MPI.Comm, JoinInfo] | None:
    """This process's merged world and join, if it was started to replace a lost rank (None
    otherwise). The first call merges (collective with the survivors' :func:`spawn_replacements`)."""
    if not _joined:
        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            return None
        merged = parent.Merge(high=True)
        merged.Set_errhandler(MPI.ERRORS_RETURN)
        _joined.append((merged, merged.bcast(None, root=0)))
    return _joined[0]


def joining(comm: Any) -> JoinInfo | None:
    """What this process joined, when ``comm`` is the world it was started to join (--rejoin)."""
    found = joined() if isinstance(comm, MPI.Comm) else None
    return found[1] if found is not None and found[0] == comm else None


def newcomer_identity(comm: Any) -> int | None:
    """The agent this process replaces when ``comm`` is the world it joined, else None."""
    join = joining(comm)
    return None if join is None else join.identities[comm.Get_rank()]


def send_heal(comm: MPI.Comm, dest: int, agent: Any, iteration: int, progress: int) -> None:
    """Heal the newcomer ``dest`` of ``comm``: this rank's agent, iteration and the run's progress.
    The agent travels as ``torch.save`` bytes, so the newcomer maps it onto its own device."""
    buffer = io.BytesIO()
    torch.save(agent, buffer)
    comm.send({"agent": buffer.getvalue(), "iteration": iteration, "progress": progress}, dest=dest)


def receive_heal(comm: MPI.Comm, source: int, device: torch.device) -> tuple[Any, int, int]:
    """A newcomer's side of :func:`send_heal`: the agent (on ``device``), iteration and progress."""
    heal = comm.recv(source=source)
    agent = torch.load(io.BytesIO(heal["agent"]), map_location=device, weights_only=False)
    return agent, heal["iteration"], heal["progress"]


def end_in_the_spawned_job() -> None:
    """A newcomer ending without ``MPI_Finalize`` (as every ``--fault-tolerant`` rank does: it hangs
    there) tells the process manager it ends on purpose, with ``PMIx_Finalize`` alone. The job it
    was spawned in is not ULFM's (mpirun's ``--with-ft ulfm`` marks the first job only): without
    it, mpirun counted the newcomer's exit improper and exited 1 after every run with a
    replacement (measured 6 of 6 small jobs: 1 without, 0 with). Nothing to do in other processes."""
    if not _joined:
        return
    maps = Path("/proc/self/maps").read_text().splitlines()
    loaded = next((line.split()[-1] for line in maps if "libpmix.so" in line), None)
    if loaded is None:
        return
    pmix = ctypes.CDLL(loaded, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # the copy MPI loaded, not a new one
    pmix.PMIx_Finalize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pmix.PMIx_Finalize.restype = ctypes.c_int
    pmix.PMIx_Finalize(None, 0)
