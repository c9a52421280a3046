"""Does a replacement rank hold under ULFM on this Open MPI? The measurement behind the choice
between rejoining in place (MPI_Comm_spawn) and restarting (launch/elastic.sh).

    python benchmarks/spawn_after_shrink.py [--tries 10] [--ranks 3] [--timeout 60]

Each try is one ``mpirun --with-ft ulfm`` job with pcasgd's fault-tolerant transport (tcp,
osc/rdma, ftagree): every rank publishes into an RMA window, the last rank SIGKILLs itself, the
survivors notice, revoke and shrink, ``Spawn`` one replacement and ``Merge``; on the merged world
an allreduce counts the ranks, and a new window is written by every rank and read across (each
rank reads its right neighbour's, the newcomer's included). A try holds when every rank saw the
full world and the right values; otherwise it is counted as failed (an exit status, a wrong
value) or hung (past ``--timeout``), with the stage reached. Every process ends without
``MPI_Finalize``, as pcasgd's fault-tolerant ranks do: finalizing frees the window that spans the
dead rank, and hung at exit in 2 of 30 tries with 4 ranks when this script still finalized.
Reported: the counts and the medians of kill-to-merged and spawn-plus-merge seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _reach(who: str, stage: str) -> None:
    """Say on stderr what this process is about to do: a failed or hung try shows where it stopped."""
    print(f"{who}: {stage}", file=sys.stderr, flush=True)


def _check_merged(merged, who: str) -> dict:
    """Allreduce and a fresh window on the merged world: the checks every rank makes."""
    from mpi4py import MPI

    rank, size = merged.Get_rank(), merged.Get_size()
    _reach(who, "allreduce on the merged world")
    counted = merged.allreduce(1)
    _reach(who, "allocating a new window on the merged world")
    win = MPI.Win.Allocate(8, 8, comm=merged)
    mine = memoryview(win.tomemory()).cast("d")
    mine[0] = float(rank + 100)
    merged.Barrier()
    right = (rank + 1) % size
    got = bytearray(8)
    _reach(who, "a read of the right neighbour's window")
    win.Lock(right, MPI.LOCK_SHARED)
    win.Get(got, right)
    win.Unlock(right)
    merged.Barrier()
    _reach(who, "freeing the window")
    win.Free()
    _reach(who, "checked")
    value = memoryview(got).cast("d")[0]
    return {"rank": rank, "size": size, "counted": counted, "read_ok": value == float(right + 100)}


def child() -> None:
    """The replacement: joins its parents' merged world."""
    from mpi4py import MPI

    from pcasgd.runtime.faults import end_without_finalize_at_exit

    end_without_finalize_at_exit()
    _reach("newcomer", "merge")
    parent = MPI.Comm.Get_parent()
    merged = parent.Merge(high=True)
    merged.Set_errhandler(MPI.ERRORS_RETURN)
    result = _check_merged(merged, "newcomer")
    print(json.dumps({"child": result}), flush=True)


def worker() -> None:
    """One rank of the original job."""
    from mpi4py import MPI

    from pcasgd.runtime.faults import end_without_finalize_at_exit

    end_without_finalize_at_exit()  # as pcasgd's ranks: finalizing would free the dead rank's window and hang
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    rank, size = comm.Get_rank(), comm.Get_size()
    win = MPI.Win.Allocate(8, 8, comm=comm)  # the job's windows, as pcasgd's exchange holds them
    who = f"rank {rank}"
    killed = time.perf_counter()
    try:  # a survivor still in this barrier when the last rank dies learns of it here
        comm.Barrier()
        if rank == size - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        _reach(who, "notice the death")
        killed = time.perf_counter()
        while True:
            comm.Barrier()  # fails once the death is known (or another survivor revoked)
            time.sleep(0.01)
    except MPI.Exception:
        pass
    _reach(who, "revoke and shrink")
    comm.Revoke()
    shrunk = comm.Shrink()
    _reach(who, "spawn")
    spawning = time.perf_counter()
    inter = shrunk.Spawn(sys.executable, [__file__, "--child"], maxprocs=1, root=0)
    _reach(who, "merge")
    merged = inter.Merge(high=False)
    merged.Set_errhandler(MPI.ERRORS_RETURN)
    merged_at = time.perf_counter()
    result = _check_merged(merged, who)
    if rank == 0:
        timing = {"kill_to_merged": merged_at - killed, "spawn_and_merge": merged_at - spawning}
        print(json.dumps({"survivor": result, **timing}), flush=True)
    del win  # the old window spans the dead rank: never freed (freeing is collective over it)


def one_try(args: argparse.Namespace) -> dict:
    from pcasgd.runtime.launch import FAULT_TOLERANT_FLAGS, FAULT_TOLERANT_MCA, mpirun_path, open_mpi_env

    env = {**open_mpi_env(str(ROOT)), **FAULT_TOLERANT_MCA}
    command = [mpirun_path() or "mpirun", *FAULT_TOLERANT_FLAGS, "--map-by", ":OVERSUBSCRIBE"]
    command += ["-n", str(args.ranks), sys.executable, __file__, "--worker"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as expired:
        return {"outcome": "hung", "seconds": time.perf_counter() - started, "stderr": str(expired.stderr)[-400:]}
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    survivor = next((line for line in lines if "survivor" in line), None)
    newcomer = next((line["child"] for line in lines if "child" in line), None)
    views = [survivor["survivor"], newcomer] if survivor is not None and newcomer is not None else []
    held = bool(views) and all(v["size"] == v["counted"] == args.ranks and v["read_ok"] for v in views)
    outcome = {"outcome": "held" if held else "failed", "exit": done.returncode}
    outcome["seconds"] = time.perf_counter() - started
    if survivor is not None:
        outcome.update(kill_to_merged=survivor["kill_to_merged"], spawn_and_merge=survivor["spawn_and_merge"])
    if not held:
        outcome["stderr"] = done.stderr[-400:]
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return 0
    if args.child:
        child()
        return 0
    outcomes = []
    for index in range(args.tries):
        outcomes.append(one_try(args))
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in outcomes[-1].items() if k != "stderr"}
        print(f"try {index}: {shown}", flush=True)
    counts = {kind: sum(o["outcome"] == kind for o in outcomes) for kind in ("held", "failed", "hung")}
    held = [o for o in outcomes if o["outcome"] == "held"]
    summary = {"tries": args.tries, "ranks": args.ranks, **counts}
    if held:
        summary["median_kill_to_merged_s"] = statistics.median(o["kill_to_merged"] for o in held)
        summary["median_spawn_and_merge_s"] = statistics.median(o["spawn_and_merge"] for o in held)
    print(json.dumps(summary), flush=True)
    for failure in (o for o in outcomes if o["outcome"] != "held"):
        print(f"{failure['outcome']}: {failure.get('stderr', '').strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
