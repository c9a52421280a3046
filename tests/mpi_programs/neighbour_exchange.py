"""The neighbour exchange (pcasgd.runtime.exchange) on 2 ranks, each the other's only neighbour:
rank 1 publishes what each case needs, rank 0 exchanges and records what it got. Rank 0
prints one JSON line."""

import json
import time

import torch
from mpi4py import MPI

from pcasgd import delays, topology
from pcasgd.algorithms import AlgorithmConfig
from pcasgd.algorithms.consensus import Snapshot
from pcasgd.errors import NeighbourFinishedError, StallError
from pcasgd.runtime.exchange import NeighbourExchange
from pcasgd.transport.clock import RunClock, offset_to_root
from pcasgd.transport.deadline import Deadline
from pcasgd.transport.windows import FLAG_FINISHED, SnapshotWindow

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
ring = topology.build("ring", 2)
deadline = Deadline(rank, 2.0)
results: dict[str, object] = {}


def vector(value: float) -> torch.Tensor:
    return torch.full((4,), value, dtype=torch.float64)


def case(mode: str, final_snapshots: bool = False, overlap: bool = False) -> tuple[SnapshotWindow, NeighbourExchange]:
    window = SnapshotWindow(comm, 4, torch.float64, slots=4)
    config = AlgorithmConfig(mode=mode, lr=0.1, overlap=overlap)
    clock = RunClock(lock_step=False)
    exchange = NeighbourExchange(
        comm, window, ring, delays.parse("none"), config, deadline, False, clock, final_snapshots
    )
    return window, exchange


def exchanged(exchange: NeighbourExchange, k: int, params: torch.Tensor, grad: torch.Tensor):
    """One whole exchange of iteration ``k``: publish and read."""
    exchange.start(k, params, grad)
    return exchange.finish()


def stamps(reads) -> list[int]:
    return [read.snapshot.stamp for read in reads]


# dsgd waits for the neighbour's snapshot of the same iteration; once the neighbour has finished,
# it ends the run, or (final_snapshots, a joined rank) mixes its last snapshot.
for final_snapshots in (False, True):
    window, exchange = case("dsgd", final_snapshots)
    if rank == 1:
        for k in range(3):
            time.sleep(0.2)  # rank 0 reaches each iteration first and must wait
            window.publish(Snapshot(vector(k), vector(0.0), k))
        window.set_flags(FLAG_FINISHED)
    else:
        got = [stamps(exchanged(exchange, k, vector(0.0), vector(0.0)).reads) for k in range(3)]
        try:
            reads = exchanged(exchange, 3, vector(0.0), vector(0.0)).reads
            after = {"stamp": reads[0].snapshot.stamp, "staleness": reads[0].staleness}
        except NeighbourFinishedError as error:
            after = f"ended: {error}"
        results[f"dsgd_final_snapshots_{final_snapshots}"] = {"waited_for": got, "after_finish": after}
    comm.Barrier()
    window.close()

# dsgd mixes exactly the neighbour's snapshot of its own iteration, even when the neighbour is
# already one step ahead (it has published k + 1 too).
window, exchange = case("dsgd")
if rank == 1:
    for k in range(2):
        window.publish(Snapshot(vector(k), vector(0.0), k))
comm.Barrier()
if rank == 0:
    results["dsgd_neighbour_ahead"] = [stamps(exchanged(exchange, k, vector(0.0), vector(0.0)).reads) for k in range(2)]
comm.Barrier()
window.close()

# With overlap, dsgd mixes exactly the neighbour's snapshot of the iteration before (read on the
# reader thread while this rank would compute), even when the neighbour is further ahead.
window, exchange = case("dsgd", overlap=True)
if rank == 1:
    for k in range(3):
        window.publish(Snapshot(vector(k), vector(0.0), k))
comm.Barrier()
if rank == 0:
    overlapped = []
    for k in range(3):
        exchange.start(k, vector(0.0), vector(0.0))
        overlapped.append(stamps(exchange.finish().reads))
    results["dsgd_overlap_neighbour_ahead"] = overlapped
comm.Barrier()
exchange.close()
window.close()

# A neighbour that publishes nothing new for the deadline, and has not finished, has stalled.
window, exchange = case("asgd")
if rank == 1:
    window.publish(Snapshot(vector(1.0), vector(0.0), 0))
    comm.Barrier()
    comm.Barrier()  # rank 0 watches it stand still meanwhile
else:
    comm.Barrier()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 10:
            exchanged(exchange, 0, vector(0.0), vector(0.0))
            time.sleep(0.05)
        results["stall"] = "not detected in 10 s"
    except StallError as error:
        results["stall"] = {"message": str(error), "after_s": round(time.monotonic() - started, 2)}
    comm.Barrier()
window.close()

# A snapshot holding NaN is left out, and its weight goes to the reader.
window, exchange = case("asgd")
if rank == 1:
    window.publish(Snapshot(vector(float("nan")), vector(0.0), 0))
comm.Barrier()
if rank == 0:
    gathered = exchanged(exchange, 0, vector(0.0), vector(0.0))
    reads, self_weight = gathered.reads, gathered.self_weight
    results["nan"] = {"reads": len(reads), "self_weight": self_weight, "reported": dict(exchange.poisoned)}
comm.Barrier()
window.close()

# Clocks and ages: one host shares the monotonic clock, so the measured offset is about 0; rank 1
# publishes every 0.2 s, so its step period is at least that, and rank 0 reads its newest
# snapshot with the age and the run progress it carries.
offset = offset_to_root(comm, deadline)
offsets = comm.gather(offset, root=0)
window, exchange = case("asgd")
if rank == 1:
    for k in range(3):
        time.sleep(0.2)
        exchange.publish(k, vector(k), vector(0.0))
comm.Barrier()
if rank == 0:
    time.sleep(0.1)
    (read,) = exchanged(exchange, 0, vector(0.0), vector(0.0)).reads
    results["ages"] = {
        "offsets": offsets,
        "stamp": read.snapshot.stamp,
        "period": read.snapshot.period,
        "age": read.age,
        "progress": exchange.progress,
    }
comm.Barrier()
window.close()

# A rank paused for a record or an evaluation says so: its newest snapshot, published just before
# the pause, stays fresh (age about 0) however long the pause lasts, instead of a whole step.
window, exchange = case("asgd")
if rank == 1:
    for k in range(3):
        time.sleep(0.1)
        exchange.publish(k, vector(k), vector(0.0))
    with exchange.pause():
        comm.Barrier()
        time.sleep(0.6)
        comm.Barrier()
else:
    comm.Barrier()
    time.sleep(0.4)
    (read,) = exchanged(exchange, 0, vector(0.0), vector(0.0)).reads
    results["paused"] = {"age": read.age, "period": read.snapshot.period}
    comm.Barrier()
window.close()

deadline.close()
if rank == 0:
    print(json.dumps(results), flush=True)
