"""How long a read of a busy rank's window takes, with each progress remedy.

Rank 1 publishes a snapshot, then computes for ``seconds`` without calling MPI (torch matmuls),
in three phases: ``none`` (no help), ``calls`` (:meth:`MpiProgress.poke` between 50 ms chunks
of compute, as the training loop does between steps) and ``thread`` (the opt-in progress
thread). Rank 0 reads rank 1's window over and over meanwhile. Prints one JSON line per phase
with the slowest read. Run it with ``OMPI_MCA_osc=ucx``: there the target must enter MPI for a
read to complete; with osc/sm every phase is fast.
"""

import json
import sys
import time

import torch
from mpi4py import MPI

from pcasgd.algorithms.consensus import Snapshot
from pcasgd.transport.progress import MpiProgress
from pcasgd.transport.windows import SnapshotWindow

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
numel = 250_000
torch.set_num_threads(1)
window = SnapshotWindow(comm, numel, torch.float32, slots=2)
window.publish(Snapshot(torch.ones(numel), torch.zeros(numel), 0))
matrix = torch.rand(256, 256)
for phase in ("none", "calls", "thread"):
    comm.Barrier()
    if rank == 1:
        progress = MpiProgress(comm, thread=phase == "thread")
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            chunk_end = time.perf_counter() + 0.05
            while time.perf_counter() < chunk_end:
                matrix = torch.tanh(matrix @ matrix)
            if phase == "calls":
                progress.poke()
        progress.close()
    elif rank == 0:
        time.sleep(0.2)  # let rank 1 get busy
        slowest, reads, end = 0.0, 0, time.perf_counter() + seconds - 0.5
        while time.perf_counter() < end:
            started = time.perf_counter()
            read = window.read(1)
            slowest = max(slowest, time.perf_counter() - started)
            reads += 1
            assert read.snapshot is not None and bool((read.snapshot.params == 1).all())
        print(json.dumps({"phase": phase, "reads": reads, "slowest_read_s": slowest}), flush=True)
comm.Barrier()
window.close()
