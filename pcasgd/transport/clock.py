"""One clock for every rank: each rank's offset to rank 0's monotonic clock, measured at start-up.

Snapshot ages compare a publisher's time with a reader's (:mod:`pcasgd.protocol.ages`). Ranks on
one host share ``CLOCK_MONOTONIC``; ranks on different hosts do not, so each rank measures how far
rank 0's clock is from its own (Cristian's method: for the round trip that came back soonest,
rank 0's reading minus the middle of the round trip) and reads rank 0's time as
``time.monotonic() + offset``. The error is at most half that round trip.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from pcasgd.transport.deadline import Deadline

#: Tag of the ping-pongs (outside the ranges the runtimes use).
TAG_CLOCK = 29_001


def offset_to_root(comm: MPI.Comm, deadline: Deadline, rounds: int = 8) -> float:
    """This rank's offset to rank 0's monotonic clock, in seconds (0 on rank 0). Collective."""
    rank, size = comm.Get_rank(), comm.Get_size()
    reading = np.zeros(1)
    if rank == 0:
        for peer in range(1, size):
            for _ in range(rounds):
                deadline.wait(comm.Irecv(reading, source=peer, tag=TAG_CLOCK), f"a clock ping from rank {peer}")
                reading[0] = time.monotonic()
                deadline.wait(comm.Isend(reading, dest=peer, tag=TAG_CLOCK), f"answering rank {peer}'s clock ping")
        return 0.0
    best_trip, offset = float("inf"), 0.0
    for _ in range(rounds):
        sent = np.array([time.monotonic()])
        deadline.wait(comm.Isend(sent, dest=0, tag=TAG_CLOCK), "sending a clock ping to rank 0")
        deadline.wait(comm.Irecv(reading, source=0, tag=TAG_CLOCK), "rank 0's clock answer")
        received = time.monotonic()
        if received - sent[0] < best_trip:
            best_trip = received - sent[0]
            offset = float(reading[0]) - 0.5 * (sent[0] + received)
    return offset


class RunClock:
    """The time snapshots are stamped and aged with: the iteration number in lock-step runs (the
    simulator's time: lock-step refuses stragglers, so every iteration lasts one unit), otherwise
    rank 0's monotonic clock in seconds."""

    def __init__(self, lock_step: bool, offset: float = 0.0) -> None:
        self.lock_step = lock_step
        self.offset = offset

    def now(self, iteration: int) -> float:
        return float(iteration) if self.lock_step else time.monotonic() + self.offset
