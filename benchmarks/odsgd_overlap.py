"""odsgd step time with and without overlapping the allreduce, on the real MPI runtime.

    python benchmarks/odsgd_overlap.py [--ranks 2] [--sizes 1000000 10000000] [--compute-ms 20] [--steps 40]

Each rank's "gradient" is a fixed random vector of the given size, produced after a compute
phase of ``--compute-ms`` milliseconds of real arithmetic (a matrix product loop: it holds the
core, as a backward pass does). ``odsgd`` then runs through :mod:`pcasgd.runtime.collective`,
blocking (``--odsgd-no-overlap``), with the allreduce in flight during the next computation
(``overlap``), and the same with the opt-in progress thread that advances the allreduce while
the rank computes. Also timed alone: the allreduce by itself. Medians over the steps.
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


class SyntheticGradients:
    """A fixed gradient after a fixed amount of real compute; records each step's start time."""

    def __init__(self, numel: int, compute_seconds: float) -> None:
        import torch

        self.grad = torch.randn(numel) * 1e-3
        self.compute_seconds = compute_seconds
        self.matrix = torch.randn(256, 256)
        self.samples = 0
        self.starts: list[float] = []

    def __call__(self, agent: int, params):
        self.starts.append(time.perf_counter())
        finish = time.perf_counter() + self.compute_seconds
        product = self.matrix
        while time.perf_counter() < finish:
            product = (product @ self.matrix).tanh()
        return self.grad, 0.0


def worker(numel: int, compute_ms: float, steps: int) -> None:
    import torch
    from mpi4py import MPI

    from pcasgd.algorithms import AlgorithmConfig
    from pcasgd.delays import parse
    from pcasgd.engine import EngineRun
    from pcasgd.runtime.collective import PendingMean, run_collective
    from pcasgd.transport.deadline import Deadline
    from pcasgd.transport.staging import HostStaging

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    deadline = Deadline(comm.Get_rank(), 600.0)
    results = {"numel": numel, "compute_ms": compute_ms, "ranks": comm.Get_size()}
    try:
        for name, overlap, thread in (("blocking", False, False), ("overlap", True, False), ("thread", True, True)):
            config = AlgorithmConfig(mode="odsgd", odsgd_warmup=0, odsgd_overlap=overlap)
            oracle = SyntheticGradients(numel, compute_ms / 1e3)
            run = EngineRun(config, parse("none"), oracle, torch.zeros(numel), steps, 1)
            comm.Barrier()
            run_collective(comm, run, deadline, progress_thread=thread)
            gaps = [b - a for a, b in zip(oracle.starts[2:-1], oracle.starts[3:], strict=True)]
            results[name] = statistics.median(gaps)
        alone = []
        grad = torch.randn(numel)
        staging = HostStaging(torch.device("cpu"), active=False)
        for step in range(steps):
            comm.Barrier()
            started = time.perf_counter()
            PendingMean(comm, grad, staging, step).mean(deadline, step)
            alone.append(time.perf_counter() - started)
        results["allreduce"] = statistics.median(alone)
    finally:
        deadline.close()
    if comm.Get_rank() == 0:
        print(json.dumps(results), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--compute-ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), float(args.worker[1]), int(args.worker[2]))
        return 0
    print(
        "| parameters | ranks | compute (ms) | allreduce alone (ms) | step, blocking (ms) | step, overlap (ms) "
        "| step, overlap + progress thread (ms) | best / blocking |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for numel in args.sizes:
        command = [sys.executable, __file__, "--worker", str(numel), str(args.compute_ms), str(args.steps)]
        r, errors = run_json_job(args.ranks, command, ROOT)
        if r is None:
            print(f"| {numel:,} | {args.ranks} | failed: {errors[-300:]!r} ||||||")
            continue
        print(
            f"| {numel:,} | {r['ranks']} | {r['compute_ms']:.0f} | {r['allreduce'] * 1e3:.2f} | "
            f"{r['blocking'] * 1e3:.2f} | {r['overlap'] * 1e3:.2f} | {r['thread'] * 1e3:.2f} | "
            f"{min(r['overlap'], r['thread']) / r['blocking']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
