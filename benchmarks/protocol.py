"""Protocol benchmark: iterations/s of every mode against its ideal, ranks whose compute is a sleep.

    python benchmarks/protocol.py [--ranks 2 4 8] [--stragglers 1 2 4] [--modes ...] \\
        [--step-ms 100] [--seconds 5] [--params 100000] [--json runs/protocol.json]

Each (ranks, straggler) pair is one real ``mpirun`` job (``ssgd-horovod`` in a job of its own)
running the package's own MPI runtime for each mode in turn, in which a rank's "compute" is a
sleep of ``step-ms`` (the last rank's times the straggler factor) returning a gradient of
``params`` float32 values. Each mode runs for about ``seconds`` at its ideal pace (at least 25
steps). Every rank stamps the end of each compute;
over the span in which all computing ranks were running (the first 0.5 s left out), the
aggregate rate is the sum of the ranks' rates (computes between a rank's first and last stamp
in the span, over the time between them). The ideal is ``sum 1 / T_i`` for
the modes that do not wait for peers and ``N / max T_i`` for those that do (``dsgd``, ``ssgd``,
``odsgd``, hardsync ``sasgd``); parameter-server modes count their workers only (rank 0
serves). For the decentralized modes the exchange of each step (publish, then read every
in-neighbour's snapshot) is timed inside the run and printed beside an in-process memcpy of the
same bytes (parameters and gradient of the rank and of each neighbour).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = (
    "ssgd-horovod",
    "ssgd",
    "odsgd",
    "dsgd",
    "asgd",
    "pcasgd",
    "pcasgd-pv",
    "ps-asgd",
    "dcasgd-a",
    "sasgd",
)
MIN_ITERATIONS = 25  # per run, so that the slowest protocols still give a rate
SETTLE_SECONDS = 0.5  # left out at the start of the common span: start-up skew between ranks


class SleepOracle:
    """The gradient oracle of the benchmark: sleep the rank's step time, return a fixed small gradient."""

    def __init__(self, step_seconds: list[float], rank_of_agent: int, numel: int) -> None:
        import torch

        self.step_seconds = step_seconds  # per rank
        self.rank_offset = rank_of_agent
        self.gradient = torch.full((numel,), 1e-4)
        self.stamps: list[float] = []
        self.samples = 0

    def __call__(self, agent: int, params):
        time.sleep(self.step_seconds[agent + self.rank_offset])
        self.stamps.append(time.monotonic())
        self.samples += 1
        return self.gradient.clone(), 0.0


def run_mode(comm, mode: str, step: float, factor: float, seconds: float, numel: int, deadline) -> dict:
    """One mode's run in this rank, with a sleeping oracle; this rank's stamps and exchange times."""
    import torch

    from pcasgd import delays, topology
    from pcasgd.algorithms.config import AlgorithmConfig
    from pcasgd.engine import EngineRun

    horovod = mode == "ssgd-horovod"
    config = AlgorithmConfig(mode="ssgd" if horovod else mode, comm="horovod" if horovod else "mpi", pv_warmup_epochs=0)
    rank, size = comm.Get_rank(), comm.Get_size()
    server = config.family == "server"
    step_seconds = [step * (factor if r == size - 1 else 1.0) for r in range(size)]
    oracle = SleepOracle(step_seconds, 1 if server else 0, numel)
    # Every run lasts about ``seconds`` at its ideal pace: protocols that wait go at the straggler's.
    pace = max(step_seconds) if config.synchronous else step
    iterations = max(MIN_ITERATIONS, round(seconds / pace))
    run = EngineRun(config, delays.parse("none"), oracle, torch.zeros(numel), iterations, 1)
    exchange_seconds: list[float] = []
    if config.family == "decentralized":
        from pcasgd.runtime.decentralized import DecentralizedRank
        from pcasgd.runtime.exchange import MpiOptions

        agent = DecentralizedRank(comm, run, topology.build("ring", size), None, MpiOptions(), deadline)
        start, finish = agent.exchange.start, agent.exchange.finish
        started_for = [0.0]  # seconds start() took, for this step

        def timed_start(*args, **kwargs):
            started = time.perf_counter()
            start(*args, **kwargs)
            started_for[0] = time.perf_counter() - started

        def timed_finish():
            started = time.perf_counter()
            result = finish()
            exchange_seconds.append(started_for[0] + time.perf_counter() - started)
            return result

        agent.exchange.start, agent.exchange.finish = timed_start, timed_finish
        agent.train()
    elif server:
        from pcasgd.runtime.parameter_server import run_parameter_server

        run_parameter_server(comm, run, deadline, deterministic=False)
    else:
        from pcasgd.runtime.collective import run_collective

        run_collective(comm, run, deadline)
    return {
        "rank": rank,
        "step_seconds": step_seconds[rank],
        "stamps": oracle.stamps,
        "exchange_seconds": exchange_seconds,
        "synchronous": config.synchronous,
        "server": server,
    }


def worker(modes: list[str], step: float, factor: float, seconds: float, numel: int, out: Path) -> None:
    """Runs inside the MPI job: each mode in turn (one job saves the start-up of torch per mode)."""
    from pcasgd.runtime.world import open_world
    from pcasgd.transport.deadline import Deadline

    comm = open_world("horovod" if modes == ["ssgd-horovod"] else "mpi")
    deadline = Deadline(comm.Get_rank(), 120.0)
    try:
        for mode in modes:
            deadline.wait(comm.Ibarrier(), f"the barrier before {mode}")
            record = run_mode(comm, mode, step, factor, seconds, numel, deadline)
            (out / f"{mode}.rank-{record['rank']}.json").write_text(json.dumps(record))
    finally:
        deadline.close()


def memcpy_seconds(numel: int, vectors: int, repeats: int = 20) -> float:
    """Median time to copy ``vectors`` vectors of ``numel`` float32 into preallocated buffers."""
    import torch

    sources = [torch.randn(numel) for _ in range(2)]
    destinations = [torch.empty(numel) for _ in range(vectors)]
    samples = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for index, destination in enumerate(destinations):
            destination.copy_(sources[index % 2])
        samples.append(time.perf_counter() - started)
    return statistics.median(samples[1:])


def _rate_between(stamps: list[float], start: float, end: float) -> float:
    """Computes per second of one rank between its first and last stamp inside [start, end]."""
    inside = [stamp for stamp in stamps if start <= stamp <= end]
    return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0


def measure(records: list[dict]) -> dict:
    """Aggregate rate, ideal and ratio from the ranks' stamps (see the module docstring)."""
    computing = [r for r in records if not (r["server"] and r["rank"] == 0)]
    start = max(r["stamps"][0] for r in computing) + SETTLE_SECONDS
    end = min(r["stamps"][-1] for r in computing)
    if end - start < 1.0:
        raise RuntimeError(f"the ranks ran together for {end - start + SETTLE_SECONDS:.2f} s only: raise --seconds")
    steps = [r["step_seconds"] for r in computing]
    synchronous = records[0]["synchronous"]
    ideal = len(steps) / max(steps) if synchronous else sum(1.0 / s for s in steps)
    rate = sum(_rate_between(r["stamps"], start, end) for r in computing)
    exchanges = [s for r in records for s in r["exchange_seconds"][1:]]
    return {
        "rate": rate,
        "ideal": ideal,
        "ratio": rate / ideal,
        "synchronous": synchronous,
        "span_seconds": end - start,
        "exchange_seconds": statistics.median(exchanges) if exchanges else None,
    }


def run_job(modes: list[str], ranks: int, factor: float, args: argparse.Namespace) -> list[dict]:
    """One ``mpirun`` job running ``modes`` in turn; a result per mode (or an error text)."""
    from pcasgd.runtime.launch import mpirun_path, open_mpi_env

    with tempfile.TemporaryDirectory() as scratch:
        command = [mpirun_path() or "mpirun", "-n", str(ranks), sys.executable, __file__, "--worker", ",".join(modes)]
        command += [str(args.step_ms / 1e3), str(factor), str(args.seconds), str(args.params), scratch]
        env = open_mpi_env(str(ROOT))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        cells = []
        for mode in modes:
            files = sorted(Path(scratch).glob(f"{mode}.rank-*.json"))
            base = {"mode": mode, "ranks": ranks, "straggler": factor}
            if len(files) != ranks:
                cells.append({**base, "error": f"exit {done.returncode}: {done.stderr[-600:]}"})
                continue
            try:
                cells.append({**base, **measure([json.loads(path.read_text()) for path in files])})
            except RuntimeError as error:
                cells.append({**base, "error": str(error)})
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, metavar="MODE")
    parser.add_argument("--ranks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--stragglers", nargs="+", type=float, default=[1.0, 2.0, 4.0], help="last rank's factor")
    parser.add_argument("--step-ms", type=float, default=100.0, help="compute time of a step (sleep)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a run at the unslowed pace")
    parser.add_argument("--params", type=int, default=100_000, help="model size (float32 values)")
    parser.add_argument("--json", type=Path, default=Path("runs/protocol.json"))
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        modes, step, factor, seconds, numel, out = args.worker
        worker(modes.split(","), float(step), float(factor), float(seconds), int(numel), Path(out))
        return 0
    print(f"step {args.step_ms:g} ms (sleep), {args.params:,} parameters, {args.seconds:g} s runs\n")
    print(
        "| mode | ranks | straggler | iterations/s | ideal | ratio | exchange ms/step | memcpy ms | exchange / memcpy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for ranks in args.ranks:
        for factor in args.stragglers:
            jobs = [[m for m in args.modes if m != "ssgd-horovod"], [m for m in args.modes if m == "ssgd-horovod"]]
            cells = [cell for modes in jobs if modes for cell in run_job(modes, ranks, factor, args)]
            for cell in sorted(cells, key=lambda c: args.modes.index(c["mode"])):
                if "error" in cell:
                    print(f"| {cell['mode']} | {ranks} | {factor:g}x | failed: {cell['error'][-300:]!r} ||||||")
                    continue
                exchange, copy, versus = "-", "-", "-"
                if cell["exchange_seconds"] is not None:
                    neighbours = 1 if ranks == 2 else 2  # ring
                    cell["memcpy_seconds"] = memcpy_seconds(args.params, 2 * (1 + neighbours))
                    exchange = f"{cell['exchange_seconds'] * 1e3:.3f}"
                    copy = f"{cell['memcpy_seconds'] * 1e3:.3f}"
                    versus = f"{cell['exchange_seconds'] / cell['memcpy_seconds']:.2f}"
                results.append(cell)
                print(
                    f"| {cell['mode']} | {ranks} | {factor:g}x | {cell['rate']:.2f} | {cell['ideal']:.2f} | "
                    f"{cell['ratio']:.3f} | {exchange} | {copy} | {versus} |",
                    flush=True,
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "cells": results}, default=str, indent=1
        )
    )
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
