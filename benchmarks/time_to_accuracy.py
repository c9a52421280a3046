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
value of the sorted times, infinite when most seeds miss), the median final accuracy, and the
ratio of the median time to tuned ``ssgd``'s of the same setting. Times are the runs' own
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


def _command(run: Run, args: argparse.Namespace, out: Path) -> list[str]:
    from pcasgd.runtime.launch import mpirun_path

    server = run.method == "dcasgd-a"
    ranks = args.agents + 1 if server else args.agents
    command = [mpirun_path() or "mpirun", "-n", str(ranks), sys.executable, "-m", "pcasgd.cli", "train"]
    command += [*METHODS[run.method], "--backend", "mpi", "--agents", str(args.agents)]
    command += ["--dataset", args.dataset, "--model", args.model]
    command += ["--partition", args.partition, "--epochs", str(args.epochs), "--seed", str(run.seed)]
    command += ["--lr", str(run.lr), "--eval-every", str(args.eval_every), "--checkpoint-every", "0"]
    if run.straggler != 1:
        command += ["--delay", f"straggler:{ranks - 1}={run.straggler:g}"]
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
                "curves": [[(x["wall_seconds"], x["test_accuracy"]) for x in r or []] for r in per_seed[method]],
            }
        results["settings"][f"{straggler:g}"] = setting
        print(table(setting, args.target, straggler, args.seeds), flush=True)
    return results


def table(setting: dict, target: float, straggler: float, seeds: list[int]) -> str:
    """The sweep (time to target / final accuracy per rate, tuning seed), then the tuned medians."""
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
        "| method | chosen lr | time to target per seed (s) | median (s) | / ssgd | median final accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in setting.items():
        ratio = row["median_time"] / reference if math.isfinite(row["median_time"]) else math.inf
        ratio_text = _fmt(ratio, 3) if math.isfinite(reference) else "n/a"
        lines.append(
            f"| {method} | {row['lr']:g} | {', '.join(_fmt(t) for t in row['times'])} | "
            f"{_fmt(row['median_time'])} | {ratio_text} | {row['median_final']:.4f} |"
        )
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
    args = parser.parse_args()
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
