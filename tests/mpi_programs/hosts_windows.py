"""Each rank publishes its rank in a one-sided window and reads the one of rank + 2 (on the other
host with two ranks per host); prints one JSON line per rank: its rank, host and what it read."""

import json
import socket

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
window = MPI.Win.Allocate(8, 1, comm=comm)
window.Lock(rank, MPI.LOCK_EXCLUSIVE)
window.Put([np.array([float(rank)]), MPI.BYTE], rank)
window.Unlock(rank)
comm.Barrier()
target = (rank + 2) % size
value = np.zeros(1)
window.Lock(target, MPI.LOCK_SHARED)
window.Get([value, MPI.BYTE], target)
window.Unlock(target)
comm.Barrier()
window.Free()
print(json.dumps({"rank": rank, "host": socket.gethostname(), "read": int(value[0])}), flush=True)
