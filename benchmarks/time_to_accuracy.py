"""Time to a target accuracy, tuned the way MLPerf and DAWNBench tune: real ``mpirun`` jobs of
``pcasgd train``, every method given the same learning-rate sweep, medians over seeds.

    python benchmarks/time_to_accuracy.py [--stragglers 1 2] [--target 0.88] [--out runs/tta]

For each straggler setting (the last agent ``F`` times slower; 1 = none) and each method:

1. **sweep**: one run per learning rate of ``--lrs`` with the tuning seed (the first of
   ``--seeds``), at the mode's own momentum (0.9, but 0 for the asynchronous server: 0.9
   diverged there, docs/algorithms.md);
2. **choose** the rate that reaches ``--target`` soonest (by wall time; a rate that never
   reaches it ranks after every rate that does, by its final accuracy);
3. **seeds**: the other seeds at the chosen rate.

Reported per method: the chosen rate, the median over seeds of the wall time to the first record
at or above the target (a seed that misses it counts as never: the median is then the middle
value of the sorted times, infinite when most seeds miss), the median final accuracy, the
median accuracy of the last record within ``--budget`` seconds, the median iterations per second
of a rank, and the ratio of the median time to tuned ``ssgd``'s of the same setting.

``--hosts``: every rank on a test host of its own (``launch/hosts.sh``, up beforehand with as
many hosts as ranks and the link's ``--rate``), for slow links; ``--compute-only`` then first
measures the iteration rate of the model with nothing exchanged, the ideal the methods are held
against (docs/RESULTS.md, "Slow links"). Times are the runs' own
``wall_seconds`` (training and records). Every run writes its directory under ``--out``; a run
already there with the same effective configuration is read back instead of run again (an
interrupted benchmark started again goes on where it stopped; changed defaults rerun it). Runs
are interleaved across methods, so the machine's load falls on every method alike.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: method name -> its ``pcasgd train`` flags
METHODS = {
    "pcasgd": ["--mode", "pcasgd"],
    "asgd": ["--mode", "asgd"],
    "dsgd": ["--mode", "dsgd"],
    "ssgd": ["--mode", "ssgd", "--comm", "horovod"],
    "odsgd": ["--mode", "odsgd"],
    "dcasgd-a": ["--mode", "dcasgd-a"],
    # overlapped exchange (ALGORITHMS.md, "Revision 2"); pcasgd with a predictor for reads a step old
    "dsgd-overlap": ["--mode", "dsgd", "--overlap"],
    "asgd-overlap": ["--mode", "asgd", "--overlap"],
    "pcasgd-overlap": ["--mode", "pcasgd", "--overlap", "--age-fresh", "0.5"],
    "pcasgd-overlap-trajectory": ["--mode", "pcasgd", "--overlap", "--age-fresh", "0.5", "--predictor", "trajectory"],
    "pcasgd-overlap-momentum": ["--mode", "pcasgd", "--overlap", "--age-fresh", "0.5", "--predictor", "momentum"],
    # snapshots published in half precision (half the bytes on the link)
    "asgd-fp16": ["--mode", "asgd", "--compression", "fp16"],
    "pcasgd-fp16": ["--mode", "pcasgd", "--compression", "fp16"],
    "asgd-overlap-fp16": ["--mode", "asgd", "--overlap", "--compression", "fp16"],
}


@dataclass(frozen=True)
class Run:
    method: str
    straggler: float
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-x{self.straggler:g}-lr{self.lr:g}-seed{self.seed}"


def _launcher(args: argparse.Namespace) -> list[str]:
    """mpirun, or mpirun from the first test host across all of them (one rank each)."""
    from pcasgd.runtime.launch import mpirun_path

    mpirun = mpirun_path() or "mpirun"
    if not args.hosts:
        return [mpirun]
    return [
        "env",
        f"PCASGD_MPIRUN={mpirun}",
        "PCASGD_HOSTS_SLOTS=1",
        "bash",
        str(ROOT / "launch" / "hosts.sh"),
        "mpirun",
    ]


def _command(run: Run, args: argparse.Namespace, out: Path) -> list[str]:
    server = run.method == "dcasgd-a"
    ranks = args.agents + 1 if server else args.agents
    command = [*_launcher(args), "-n", str(ranks), sys.executable, "-m", "pcasgd.cli", "train"]
    command += [*METHODS[run.method], "--backend", "mpi", "--agents", str(args.agents)]
    command += ["--dataset", args.dataset, "--model", args.model]
    command += ["--partition", args.partition, "--epochs", str(args.epochs), "--seed", str(run.seed)]
    command += ["--lr", str(run.lr), "--eval-every", str(args.eval_every), "--checkpoint-every", "0"]
    if run.straggler != 1:
        command += ["--delay", f"straggler:{ranks - 1}={run.straggler:g}"]
    decentralized = METHODS[run.method][1] in ("dsgd", "asgd", "pcasgd")
    command += [*args.extra, *(args.decentralized_extra if decentralized else [])]
    return [*command, "--out", str(out), "--overwrite"]


def records_of(run: Run, args: argparse.Namespace) -> list[dict] | None:
    """The run's metric records (running it unless it already ran with this command); None if it
    failed while training (diverged)."""
    from pcasgd.app.compare import finished_summary
    from pcasgd.cli import effective_config
    from pcasgd.runtime.launch import open_mpi_env

    out = args.out / run.name
    command = _command(run, args, out)
    if finished_summary(out, effective_config(command[command.index("train") + 1 :])) is None:
        done = subprocess.run(command, env=open_mpi_env(str(ROOT)), capture_output=True, text=True, check=False)
        if done.returncode == 1:  # pcasgd train: the run failed while training
            print(f"  {run.name}: failed while training: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            return None
        if done.returncode != 0:
            raise RuntimeError(f"{run.name} could not run (exit {done.returncode}): {done.stderr[-1500:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def time_to(target: float, records: list[dict] | None) -> float:
    """Wall seconds of the first record at or above ``target`` (inf: never, or the run failed)."""
    reached = [r["wall_seconds"] for r in records or [] if r["test_accuracy"] >= target]
    return reached[0] if reached else math.inf


def final_accuracy(records: list[dict] | None) -> float:
    return records[-1]["test_accuracy"] if records else math.nan


def accuracy_within(budget: float, records: list[dict] | None) -> float:
    """Test accuracy of the last record within ``budget`` wall seconds (0 before the first)."""
    if not records:
        return math.nan
    within = [r["test_accuracy"] for r in records if r["wall_seconds"] <= budget]
    return within[-1] if within else 0.0


def iteration_rate(records: list[dict] | None) -> float:
    """Iterations per second of a rank: the ranks' mean iterations over the run's wall time."""
    if not records:
        return math.nan
    last = records[-1]
    return statistics.mean(last["iterations"]) / last["wall_seconds"]


def compute_only_rate(args: argparse.Namespace) -> float:
    """Iterations per second of a rank that computes and never exchanges, with every rank doing
    so at once on its host (the same contention for the cores as the runs)."""
    from pcasgd.runtime.launch import open_mpi_env

    command = [*_launcher(args), "-n", str(args.agents), sys.executable, __file__, "--compute-worker"]
    command += ["--dataset", args.dataset, "--model", args.model, "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=open_mpi_env(str(ROOT)), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the compute-only job failed: {done.stderr[-1500:]}")
    return float(done.stdout.strip().splitlines()[-1])


def compute_worker(args: argparse.Namespace) -> None:
    """Runs inside the compute-only job: 10 s of forward, backward and SGD steps on random data
    shaped like the data set's, one thread per rank; rank 0 prints the ranks' median rate."""
    import time

    import torch
    from mpi4py import MPI

    from pcasgd.app.data import load
    from pcasgd.app.models import build_model

    torch.set_num_threads(1)
    data = load(args.dataset, None)
    model = build_model(args.model, data.input_shape, data.classes)
    images = torch.randn(args.batch_size, *data.input_shape)
    labels = torch.randint(0, data.classes, (args.batch_size,))
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    MPI.COMM_WORLD.Barrier()
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < 10:
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        sgd.step()
        steps += 1
    rates = MPI.COMM_WORLD.gather(steps / (time.perf_counter() - started))
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(statistics.median(rates), flush=True)


def _rank(target: float, records: list[dict] | None) -> tuple[float, float]:
    """Sort key of a sweep run: time to target, then (for runs that miss it) higher final accuracy."""
    accuracy = final_accuracy(records)
    return time_to(target, records), -(accuracy if math.isfinite(accuracy) else -1.0)


def _fmt(value: float, digits: int = 1) -> str:
    return "not reached" if math.isinf(value) else ("failed" if math.isnan(value) else f"{value:.{digits}f}")


def benchmark(args: argparse.Namespace) -> dict:
    tuning_seed, other_seeds = args.seeds[0], args.seeds[1:]
    results: dict = {"target": args.target, "settings": {}}
    for straggler in args.stragglers:
        print(f"\n## straggler {straggler:g}x: learning-rate sweep (seed {tuning_seed})", flush=True)
        sweep: dict[str, dict[float, list[dict] | None]] = {m: {} for m in args.methods}
        for lr in args.lrs:
            for method in args.methods:
                records = records_of(Run(method, straggler, lr, tuning_seed), args)
                sweep[method][lr] = records
                print(
                    f"  {method} lr {lr:g}: time to {args.target} {_fmt(time_to(args.target, records))} s, "
                    f"final {_fmt(final_accuracy(records), 4)}",
                    flush=True,
                )
        chosen = {m: min(args.lrs, key=lambda lr, m=m: _rank(args.target, sweep[m][lr])) for m in args.methods}
        per_seed: dict[str, list[list[dict] | None]] = {m: [sweep[m][chosen[m]]] for m in args.methods}
        for seed in other_seeds:
            for method in args.methods:
                per_seed[method].append(records_of(Run(method, straggler, chosen[method], seed), args))
        setting = {}
        for method in args.methods:
            times = [time_to(args.target, records) for records in per_seed[method]]
            finals = [final_accuracy(records) for records in per_seed[method]]
            budgeted = [accuracy_within(args.budget, records) for records in per_seed[method]]
            rates = [iteration_rate(records) for records in per_seed[method]]
            setting[method] = {
                "lr": chosen[method],
                "sweep": {
                    str(lr): {
                        "time_to_target": time_to(args.target, r),
                        "final_accuracy": final_accuracy(r),
                        "curve": [(x["wall_seconds"], x["test_accuracy"]) for x in r or []],
                    }
                    for lr, r in sweep[method].items()
                },
                "times": times,
                "finals": finals,
                "median_time": statistics.median(times),
                "median_final": statistics.median(finals),
                "within_budget": budgeted,
                "median_within_budget": statistics.median(budgeted),
                "iteration_rates": rates,
                "median_iteration_rate": statistics.median(rates),
                "curves": [[(x["wall_seconds"], x["test_accuracy"]) for x in r or []] for r in per_seed[method]],
            }
        results["settings"][f"{straggler:g}"] = setting
        print(table(setting, args, straggler), flush=True)
    return results


def table(setting: dict, args: argparse.Namespace, straggler: float) -> str:
    """The sweep (time to target / final accuracy per rate, tuning seed), then the tuned medians."""
    target, seeds, ideal = args.target, args.seeds, args.compute_only
    rates = list(next(iter(setting.values()))["sweep"])
    lines = [
        f"\nstraggler {straggler:g}x, sweep with seed {seeds[0]}: time to {target} (s) / final accuracy\n",
        "| method | " + " | ".join(f"lr {lr}" for lr in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for method, row in setting.items():
        cells = [f"{_fmt(e['time_to_target'])} / {e['final_accuracy']:.4f}" for e in row["sweep"].values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    reference = setting.get("ssgd", {}).get("median_time", math.nan)
    lines += [
        f"\nstraggler {straggler:g}x, target {target}, seeds {' '.join(map(str, seeds))} (medians)\n",
        "| method | chosen lr | time to target per seed (s) | median (s) | / ssgd | median final accuracy "
        f"| accuracy at {args.budget:g} s | iterations/s per rank{' (/ compute only)' if ideal else ''} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, row in setting.items():
        ratio = row["median_time"] / reference if math.isfinite(row["median_time"]) else math.inf
        ratio_text = _fmt(ratio, 3) if math.isfinite(reference) else "n/a"
        rate = row["median_iteration_rate"]
        rate_text = f"{rate:.1f}" + (f" ({rate / ideal:.2f})" if ideal else "")
        lines.append(
            f"| {method} | {row['lr']:g} | {', '.join(_fmt(t) for t in row['times'])} | "
            f"{_fmt(row['median_time'])} | {ratio_text} | {row['median_final']:.4f} | "
            f"{row['median_within_budget']:.4f} | {rate_text} |"
        )
    if ideal:
        lines.append(f"\ncompute only (nothing exchanged): {ideal:.1f} iterations/s per rank")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--stragglers", nargs="+", type=float, default=[2.0, 1.0], help="the last agent's slowdown")
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the first one tunes the lr")
    parser.add_argument("--target", type=float, default=0.88, help="test accuracy every method must reach")
    parser.add_argument("--agents", type=int, default=4, help="agents (workers; the server is one more rank)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run (of its fastest agent)")
    parser.add_argument("--eval-every", type=int, default=117, help="iterations between records")
    parser.add_argument("--out", type=Path, default=Path("runs/tta"))
    parser.add_argument("--budget", type=float, default=60.0, help="wall seconds for the accuracy-at-a-budget column")
    parser.add_argument("--hosts", action="store_true", help="one rank per test host (launch/hosts.sh up N --rate R)")
    parser.add_argument("--batch-size", type=int, default=32, help="for --compute-only (the runs' own default)")
    parser.add_argument("--compute-only", action="store_true", help="first measure the iteration rate without exchange")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more pcasgd train flags for every run")
    parser.add_argument("--compute-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.decentralized_extra = ["--progress-thread"] if args.hosts else []
    if args.compute_worker:
        compute_worker(args)
        return 0
    args.compute_only = compute_only_rate(args) if args.compute_only else None
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.dataset}, {args.model}, {args.partition}, {args.agents} agents, {args.epochs} epochs per run, "
        f"target {args.target}; methods {', '.join(args.methods)}; lrs {args.lrs}",
        flush=True,
    )
    results = benchmark(args)
    (args.out / "time_to_accuracy.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
