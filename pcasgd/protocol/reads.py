"""A decentralized agent's reads of its in-neighbours at one iteration, whatever holds the
snapshots: the simulator's rings, or the MPI runtime's windows.

For in-neighbour ``j`` of the iteration's graph, the engine's ``read(j, lag)`` returns the
snapshot ``lag`` stamps behind ``j``'s newest (the injected lag; 0 for the synchronous modes,
which pay a lag in time instead) and that newest (:class:`~pcasgd.protocol.ages.Latest`):
:func:`fetch_reads`. Once the reads are complete (at once, or after the gradient with
``--overlap``), :func:`assemble_reads` weighs them: the read's staleness is ``max(0, k - stamp)``
(a metric); its ages (:func:`~pcasgd.protocol.ages.snapshot_ages`, at the time the reads
complete) decide whether it is delayed. A snapshot that holds NaN or Inf is left out and its
weight goes to the reading agent, so the row still sums to 1.

The agent's epoch (for the learning-rate schedule and pv's warm-up) is the run's progress as the
agent knows it: the largest iteration count among its own and what its neighbours' snapshots
report (each publishes the progress it knows), over ``iterations_per_epoch``. A straggler so
follows the fastest agent's schedule, at most a few hops late, in every engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import NeighbourRead, Snapshot
from pcasgd.delays import DelayModel
from pcasgd.engine import all_finite
from pcasgd.protocol.ages import Latest, snapshot_ages
from pcasgd.topology import Topology

#: A neighbour's read: its number, the snapshot, and the newest snapshot the read considered.
Fetched = tuple[int, Snapshot, Latest]


@dataclass(frozen=True)
class Reads:
    """What an agent mixes: its neighbours' reads, its own weight, and the snapshots left out."""

    reads: list[NeighbourRead]
    self_weight: float
    left_out: list[tuple[int, int]]  # (neighbour, stamp) of each non-finite snapshot
    progress: int  # the run's progress as this agent knows it (iterations of the fastest agent)


def fetch_reads(
    agent: int,
    k: int,
    topology: Topology,
    config: AlgorithmConfig,
    delays: DelayModel,
    read: Callable[[int, int], tuple[Snapshot, Latest]],
) -> list[Fetched]:
    """Agent ``agent``'s reads of its in-neighbours at iteration ``k`` over ``topology`` (the graph
    of iteration ``k``)."""
    fetched = []
    for j in topology.in_neighbours(agent):
        lag = 0 if config.synchronous else delays.lag(agent, j, k)
        fetched.append((j, *read(j, lag)))
    return fetched


def assemble_reads(
    agent: int, k: int, topology: Topology, fetched: list[Fetched], now: float, own_period: float
) -> Reads:
    """What agent ``agent`` mixes at iteration ``k`` from its completed reads, aged at ``now``,
    its own step period being ``own_period``."""
    self_weight = float(topology.weights[agent, agent])
    reads, left_out, progress = [], [], k
    for j, snapshot, latest in fetched:
        weight = float(topology.weights[agent, j])
        if not (all_finite(snapshot.params) and (snapshot.grad is None or all_finite(snapshot.grad))):
            self_weight += weight
            left_out.append((j, snapshot.stamp))
            continue
        age, own_age = snapshot_ages(snapshot.stamp, latest, now, own_period)
        reads.append(NeighbourRead(j, weight, snapshot, max(0, k - snapshot.stamp), age, own_age))
        progress = max(progress, snapshot.progress)
    return Reads(reads, self_weight, left_out, progress)
