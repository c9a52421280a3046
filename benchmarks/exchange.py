"""Exchange cost per step of the snapshot windows, next to an in-process memcpy of the same bytes.

    python benchmarks/exchange.py [--sizes 1000000 25000000] [--repeats 30]

One step of a rank = publish its parameters and gradient, then read every in-neighbour's
snapshot (parameters and gradient). The memcpy reference copies the same bytes inside one
process ((1 + neighbours) x 2 vectors into preallocated buffers). Each configuration is one
real ``mpirun`` job: 2 neighbours = a ring of 3 ranks, 4 neighbours = the full graph of 5 ranks.
``idle``: rank 0 steps while the others wait (the cost of one exchange); ``busy``: every rank
steps at once (they share this machine's cores and memory bandwidth). Medians over the repeats.
``--fault-tolerant``: under ULFM with the transport it needs (tcp and osc/rdma instead of shared
memory and osc/sm), what ``pcasgd train --fault-tolerant`` pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pcasgd.runtime.launch import run_json_job

ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(step, repeats: int) -> float:
    step()  # first touch of fresh memory is not the steady state
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def worker(numel: int, repeats: int) -> None:
    """Runs inside the MPI job."""
    import torch
    from mpi4py import MPI

    from pcasgd.algorithms.consensus import Snapshot
    from pcasgd.transport.windows import SnapshotWindow

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    neighbours = [(rank - 1) % size, (rank + 1) % size] if size == 3 else [j for j in range(size) if j != rank]
    params = torch.randn(numel)
    grad = torch.randn(numel)
    window = SnapshotWindow(comm, numel, torch.float32, slots=2)
    stamp = [0]

    def exchange() -> None:
        window.publish(Snapshot(params, grad, stamp[0]))
        stamp[0] += 1
        for j in neighbours:
            window.read(j)

    window.publish(Snapshot(params, grad, 0))
    comm.Barrier()
    results = {}
    if rank == 0:
        results["idle"] = _median_seconds(exchange, repeats)
    comm.Barrier()
    busy = _median_seconds(exchange, repeats)
    comm.Barrier()
    busy_all = comm.gather(busy, root=0)
    if rank == 0:
        destinations = [torch.empty(numel) for _ in range(2 * (1 + len(neighbours)))]

        def memcpy() -> None:
            for index, destination in enumerate(destinations):
                destination.copy_(params if index % 2 == 0 else grad)

        results["memcpy"] = _median_seconds(memcpy, repeats)
        results["busy"] = statistics.median(busy_all)
        results.update(numel=numel, neighbours=len(neighbours), ranks=size)
        print(json.dumps(results), flush=True)
    comm.Barrier()
    window.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 25_000_000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--fault-tolerant", action="store_true", help="under ULFM: tcp and osc/rdma")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    print("| parameters | neighbours | exchange, idle (ms) | exchange, all busy (ms) | memcpy (ms) | idle / memcpy |")
    print("|---|---|---|---|---|---|")
    for numel in args.sizes:
        for ranks in (3, 5):
            command = [sys.executable, __file__, "--worker", str(numel), str(args.repeats)]
            r, errors = run_json_job(ranks, command, ROOT, fault_tolerant=args.fault_tolerant)
            if r is None:
                print(f"| {numel:,} | {ranks - 1 if ranks == 5 else 2} | failed: {errors[-300:]!r} |||")
                continue
            print(
                f"| {r['numel']:,} | {r['neighbours']} | {r['idle'] * 1e3:.2f} | {r['busy'] * 1e3:.2f} | "
                f"{r['memcpy'] * 1e3:.2f} | {r['idle'] / r['memcpy']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
