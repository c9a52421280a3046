"""A decentralized agent's reads of its in-neighbours at one iteration, whatever holds the
snapshots: the simulator's rings, or the MPI runtime's windows.

For in-neighbour ``j`` of the iteration's graph, the engine's ``read(j, lag)`` returns the
snapshot ``lag`` stamps behind ``j``'s newest (the injected lag; 0 for the synchronous modes,
which pay a lag in time instead). The read's staleness is ``max(0, k - stamp)``. A snapshot that
holds NaN or Inf is left out and its weight goes to the reading agent, so the row still sums
to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import NeighbourRead, Snapshot
from pcasgd.delays import DelayModel
from pcasgd.engine import all_finite
from pcasgd.topology import Topology


@dataclass(frozen=True)
class Reads:
    """What an agent mixes: its neighbours' reads, its own weight, and the snapshots left out."""

    reads: list[NeighbourRead]
    self_weight: float
    left_out: list[tuple[int, int]]  # (neighbour, stamp) of each non-finite snapshot


def gather_reads(
    agent: int,
    k: int,
    topology: Topology,
    config: AlgorithmConfig,
    delays: DelayModel,
    read: Callable[[int, int], Snapshot],
) -> Reads:
    """Agent ``agent``'s reads at iteration ``k`` over ``topology`` (the graph of iteration ``k``)."""
    self_weight = float(topology.weights[agent, agent])
    reads, left_out = [], []
    for j in topology.in_neighbours(agent):
        lag = 0 if config.synchronous else delays.lag(agent, j, k)
        snapshot = read(j, lag)
        weight = float(topology.weights[agent, j])
        if not (all_finite(snapshot.params) and all_finite(snapshot.grad)):
            self_weight += weight
            left_out.append((j, snapshot.stamp))
            continue
        reads.append(NeighbourRead(j, weight, snapshot, max(0, k - snapshot.stamp)))
    return Reads(reads, self_weight, left_out)
