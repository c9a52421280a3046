"""Real-compute benchmark: samples/s of pcasgd against Horovod, DDP and one process, 2 ranks x 1 thread.

    python benchmarks/real_compute.py [--workloads resnet20-cifar10 lenet5-fashion-mnist] \\
        [--json runs/real_compute.json]

Every contender trains the same model on the same real data (CIFAR-10 from the JPEG copy in
../shared/data, or Fashion-MNIST), batch ``--batch-size`` per rank, augmentation included:

- ``single, 1 thread`` / ``single, 2 threads``: one process, a plain PyTorch loop;
- ``pcasgd``: the package's asynchronous MPI runtime (2 ranks, ``pcasgd`` mode);
- ``horovod``: a plain loop with ``hvd.DistributedOptimizer`` under ``mpirun`` (SSGD), once with
  Open MPI's defaults and once with ``OMPI_MCA_mpi_yield_when_idle=1``;
- ``ddp (gloo)``: a plain loop with ``DistributedDataParallel`` over gloo.

With ``--straggler F`` rank 1 sleeps ``(F - 1)`` times the duration of its previous step
(the package's straggler rule). Each rank stamps the end of every step; the rate is the samples
finished inside the span in which every rank was running, divided by that span. The
asynchronous ideal is the sum of the ranks' own solo rates: ``(1 + 1 / F)`` times the one-thread
single-process rate. Each contender also prints Horovod's synthetic-benchmark line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.protocol import SETTLE_SECONDS  # noqa: E402

WORKLOADS = {
    # name: (dataset, data dir, model, steps per rank)
    "resnet20-cifar10": ("cifar10", str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"), "resnet20", 30),
    "lenet5-fashion-mnist": ("fashion-mnist", None, "lenet5", 300),
}
CONTENDERS = ("single-1", "single-2", "pcasgd", "horovod", "horovod-yield", "ddp")
LABELS = {
    "single-1": "single process, 1 thread",
    "single-2": "single process, 2 threads",
    "pcasgd": "pcasgd (asynchronous, MPI windows)",
    "horovod": "Horovod SSGD, Open MPI defaults",
    "horovod-yield": "Horovod SSGD, mpi_yield_when_idle=1",
    "ddp": "PyTorch DDP (gloo)",
}


class StragglerClock:
    """Stamps the end of each step; on a slowed rank, sleeps ``(factor - 1)`` x the previous step first."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.stamps: list[float] = []
        self._previous = 0.0

    def before_step(self) -> float:
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * self._previous)
        return time.perf_counter()

    def after_step(self, started: float) -> None:
        self._previous = time.perf_counter() - started
        self.stamps.append(time.monotonic())


class StampingOracle:
    """A gradient oracle that stamps the end of each gradient (for the pcasgd runtime)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.stamps: list[float] = []

    @property
    def samples(self) -> int:
        return self.inner.samples

    def __call__(self, agent: int, params):
        result = self.inner(agent, params)
        self.stamps.append(time.monotonic())
        return result


def _plain_loop(model, data, batch_size: int, steps: int, rank: int, clock: StragglerClock, optimizer) -> None:
    import numpy as np
    import torch

    rng = np.random.default_rng([0, rank])
    generator = torch.Generator().manual_seed(rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        started = clock.before_step()
        x, y = data.train_batch(rng.integers(0, data.train_size, batch_size))
        loss = loss_fn(model(data.inputs(x, generator)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock.after_step(started)


def worker(contender: str, workload: str, factor: float, batch_size: int, steps: int, out: Path) -> None:
    """Runs in each rank (or the single process)."""
    import torch

    from pcasgd.app.data import load, partition_iid
    from pcasgd.app.models import build_model

    dataset, data_dir, model_name, default_steps = WORKLOADS[workload]
    steps = steps or default_steps
    torch.set_num_threads(2 if contender == "single-2" else 1)
    torch.manual_seed(0)
    data = load(dataset, Path(data_dir) if data_dir else None)
    model = build_model(model_name, data.input_shape, data.classes)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    clock = StragglerClock(factor if rank == 1 else 1.0)
    make_sgd = lambda parameters: torch.optim.SGD(parameters, lr=0.05, momentum=0.9)  # noqa: E731
    stamps = clock.stamps
    if contender.startswith("single"):
        _plain_loop(model, data, batch_size, steps, rank, clock, make_sgd(model.parameters()))
    elif contender.startswith("horovod"):
        import horovod.torch as hvd

        hvd.init()
        optimizer = hvd.DistributedOptimizer(make_sgd(model.parameters()), named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        _plain_loop(model, data, batch_size, steps, rank, clock, optimizer)
        hvd.shutdown()
    elif contender == "ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=rank, world_size=2)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        _plain_loop(ddp, data, batch_size, steps, rank, clock, make_sgd(ddp.parameters()))
        dist.destroy_process_group()
    else:
        from mpi4py import MPI

        from pcasgd import delays, topology
        from pcasgd.algorithms.config import AlgorithmConfig
        from pcasgd.app.oracle import BatchOracle
        from pcasgd.engine import EngineRun
        from pcasgd.flat import flatten_parameters, segment_offsets
        from pcasgd.runtime.decentralized import DecentralizedRank
        from pcasgd.runtime.exchange import MpiOptions
        from pcasgd.transport.deadline import Deadline

        comm = MPI.COMM_WORLD
        shards = partition_iid(data.train_size, comm.Get_size(), 0)
        oracle = StampingOracle(BatchOracle(model, data, shards, batch_size, seed=0))
        delay = f"straggler:1={factor}" if factor > 1.0 else "none"
        config = AlgorithmConfig(mode="pcasgd", lr=0.05)
        run = EngineRun(config, delays.parse(delay), oracle, flatten_parameters(model), steps, 1)
        deadline = Deadline(rank, 300.0)
        schedule = topology.build("ring", comm.Get_size())
        DecentralizedRank(comm, run, schedule, segment_offsets(model), MpiOptions(), deadline).train()
        deadline.close()
        stamps = oracle.stamps
    (out / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "stamps": stamps}))


def samples_per_second(stamp_lists: list[list[float]], batch_size: int) -> tuple[float, list[float]]:
    """Aggregate samples/s over the span every rank was running, and each rank's own rate there."""
    start = max(stamps[0] for stamps in stamp_lists) + SETTLE_SECONDS
    end = min(stamps[-1] for stamps in stamp_lists)
    if end - start < 2.0:
        raise RuntimeError(f"the ranks overlapped for {end - start:.2f} s only")
    per_rank = [sum(start < s <= end for s in stamps) * batch_size / (end - start) for stamps in stamp_lists]
    return sum(per_rank), per_rank


def run_contender(
    contender: str, workload: str, factor: float, batch_size: int, steps: int
) -> tuple[float, list[float]]:
    from pcasgd.runtime.launch import mpirun_path, open_mpi_env

    env = open_mpi_env(str(ROOT))
    if contender == "horovod":
        env.pop("OMPI_MCA_mpi_yield_when_idle", None)
    with tempfile.TemporaryDirectory() as scratch:
        worker_argv = [
            sys.executable,
            __file__,
            "--worker",
            contender,
            workload,
            str(factor),
            str(batch_size),
            str(steps),
            scratch,
        ]
        command = (
            worker_argv if contender.startswith("single") else [mpirun_path() or "mpirun", "-n", "2", *worker_argv]
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        files = sorted(Path(scratch).glob("rank-*.json"))
        if done.returncode != 0 or not files:
            raise RuntimeError(f"{contender} failed (exit {done.returncode}): {done.stderr[-800:]}")
        stamp_lists = [json.loads(path.read_text())["stamps"] for path in files]
    if len(stamp_lists) == 1:  # one process: its steady rate after the settling time
        stamps = stamp_lists[0]
        start = stamps[0] + SETTLE_SECONDS
        done_after = [s for s in stamps if s > start]
        rate = len(done_after) * batch_size / (stamps[-1] - start)
        return rate, [rate]
    return samples_per_second(stamp_lists, batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--straggler", type=float, default=2.0, help="rank 1's slowdown in the straggler runs")
    parser.add_argument("--batch-size", type=int, default=128, help="per rank")
    parser.add_argument("--steps", type=int, default=0, help="steps per rank (0: the workload's default)")
    parser.add_argument("--json", type=Path, default=Path("runs/real_compute.json"))
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        contender, workload, factor, batch_size, steps, out = args.worker
        worker(contender, workload, float(factor), int(batch_size), int(steps), Path(out))
        return 0
    results = []
    for workload in args.workloads:
        rates: dict[tuple[str, float], tuple[float, list[float]]] = {}
        for factor in (1.0, args.straggler):
            for contender in args.contenders:
                if contender.startswith("single") and factor > 1.0:
                    continue  # one process has no straggler
                try:
                    rates[contender, factor] = run_contender(contender, workload, factor, args.batch_size, args.steps)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    print(f"{workload}: {LABELS[contender]}, straggler {factor:g}x failed: {error}", flush=True)
                    continue
                rate, per_rank = rates[contender, factor]
                results.append(
                    {
                        "workload": workload,
                        "contender": contender,
                        "straggler": factor,
                        "rate": rate,
                        "per_rank": per_rank,
                    }
                )
                print(
                    f"{LABELS[contender]}, straggler {factor:g}x: Total img/sec on {len(per_rank)} CPU(s): {rate:.1f}",
                    flush=True,
                )
        print(f"\n## {workload}: batch {args.batch_size} per rank, 2 ranks x 1 thread (single: one process)\n")
        print("| contender | straggler | samples/s | per rank | vs asynchronous ideal | vs DDP |")
        print("|---|---|---|---|---|---|")
        solo = rates.get(("single-1", 1.0), (None,))[0]
        for (contender, factor), (rate, per_rank) in rates.items():
            ideal = solo * (1.0 + 1.0 / factor) if solo else None
            ddp = rates.get(("ddp", factor), (None,))[0]
            versus_ideal = f"{rate / ideal:.3f}" if ideal and not contender.startswith("single") else "-"
            versus_ddp = f"{rate / ddp:.3f}" if ddp else "-"
            print(
                f"| {LABELS[contender]} | {factor:g}x | {rate:.1f} | {', '.join(f'{r:.1f}' for r in per_rank)} | "
                f"{versus_ideal} | {versus_ddp} |"
            )
        if solo:
            ideal = solo * (1 + 1 / args.straggler)
            print(f"\nasynchronous ideal with a {args.straggler:g}x straggler: {ideal:.1f} samples/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
