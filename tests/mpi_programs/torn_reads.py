"""Every rank publishes snapshots filled with their stamp as fast as it can while reading its
neighbours' windows; any read whose payload mixes two publishes is a torn read. One slot, so
each publish overwrites the slot readers read and only the publish order and the readers' stamp
checks keep reads whole. Prints one line per rank: reads done, distinct stamps seen, torn reads
found."""

import sys
import time

import torch
from mpi4py import MPI

from pcasgd.algorithms.consensus import Snapshot
from pcasgd.transport.windows import SnapshotWindow

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
numel = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
window = SnapshotWindow(comm, numel, torch.float32, slots=1)
reads = torn = 0
seen = set()
stamp = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    value = float(rank * 1_000_000 + stamp)
    window.publish(Snapshot(torch.full((numel,), value), torch.full((numel,), -value), stamp))
    stamp += 1
    for offset in range(1, size):
        source = (rank + offset) % size
        read = window.read(source)
        if read.snapshot is None:
            continue
        reads += 1
        snap = read.snapshot
        expected = float(source * 1_000_000 + snap.stamp)
        if not (bool((snap.params == expected).all()) and bool((snap.grad == -expected).all())):
            torn += 1
        seen.add((source, snap.stamp))
comm.Barrier()
window.close()
print(f"rank {rank} reads {reads} stamps {len(seen)} torn {torn}", flush=True)
