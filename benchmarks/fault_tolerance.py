"""What a dead rank costs ``pcasgd --fault-tolerant``, and Horovod Elastic: real jobs, one rank
killed with SIGKILL at 40 % of the run, against uninterrupted runs of the surviving number of ranks.

    python benchmarks/fault_tolerance.py [--cases 4 0 8 regrow rejoin api hosts hosts-horovod 4-horovod
        api-horovod] [--seeds 0 1 2] [--out runs/faults]

Cases: ``4`` (4 ranks, rank 2 killed; baseline 3 ranks), ``0`` (4 ranks, rank 0 killed: the
lowest survivor records on; baseline 3), ``8`` (8 ranks, rank 5 killed; baseline 7),
``regrow`` (4 ranks under launch/elastic.sh, rank 2 killed at 60 %: the supervisor restarts the
job on 4 from the newest checkpoints, ``--checkpoint-every 1``; baseline: 4 ranks under the same
supervisor, uninterrupted; its cell also gives the wall-time ratio), ``rejoin`` (4 ranks with
``--rejoin``, rank 2 killed at 60 %: the survivors spawn a replacement that joins the running job;
baseline: 4 ranks uninterrupted; also the seconds from the kill to the replacement's first step),
``api`` (your own loop: Horovod's elastic example as ported,
examples/horovod_pytorch_mnist_elastic.py, one epoch of Fashion-MNIST with its own network on 4
ranks, rank 2 killed a quarter into its shard; baseline 3 ranks; the accuracy is the example's
own test print), ``hosts`` (4 ranks over
launch/hosts.sh's two hosts, rank 3 on node2 killed;
baseline 3 ranks over the hosts): ``pcasgd`` under ULFM. ``hosts-horovod``: the baseline
method's own recovery, ``ssgd --comm horovod`` under elastic ``horovodrun`` over the two hosts
(``launch/hosts.sh horovodrun``), rank 2 killed, which removes its host's two workers; baseline
2 ranks (on one host, as the survivors are). ``4-horovod`` and ``api-horovod``: Horovod Elastic
on the ``4`` and ``api`` cells, one worker per host (``launch/hosts.sh up 4`` first), so that the
kill removes one worker: ``ssgd --comm horovod``, and Horovod's own elastic example (the port's
changes undone) under ``horovodrun``; baselines 3 workers. Every run has the same flags (Fashion-MNIST
LeNet-5, ``--epochs``, ``--fault-tolerant``), so transport and settings are alike; the kill comes
when the run's record of epoch ``2/5 * epochs`` appears. Reported per case and seed: both final
accuracies, their difference, and the seconds from the kill to the survivors' first step on the
new world (rank 0's clock; the same machine's; "run over" when the run ended, a rank having
reached its last epoch, before rank 0 stepped again; for the examples, which report no step,
from the kill to the first progress line past those printed before it: the survivors' next
``--log-interval`` of 20 steps, the same for both). Prints a table and writes
``OUT/results.json``; runs already in ``OUT`` are rerun (a kill cannot be read back).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.faults import run_elastic_example, torchvision_mnist, train_and_kill  # noqa: E402
from pcasgd.runtime.launch import mpirun_path, open_mpi_env, remove_stale_session_dirs  # noqa: E402

HOSTS_SCRIPT = str(ROOT / "launch" / "hosts.sh")
HOSTS = ["env", f"PCASGD_MPIRUN={mpirun_path()}", "bash", HOSTS_SCRIPT, "mpirun"]
HOROVODRUN = Path(sys.executable).parent / "horovodrun"
HOSTS_HOROVOD = ["env", f"PCASGD_HOROVODRUN={HOROVODRUN}", "bash", HOSTS_SCRIPT, "horovodrun"]
# One worker per host: Horovod Elastic removes a dead worker's whole host, so this loses one worker.
HOROVOD_PER_HOST = ["env", "PCASGD_HOSTS_SLOTS=1", *HOSTS_HOROVOD]
SSGD_HOROVOD = ["--mode", "ssgd", "--comm", "horovod"]
PCASGD = ["--mode", "pcasgd"]
DISCOVER_4 = ["--hosts-script", str(ROOT / "benchmarks" / "four_slots.sh"), "--poll", "0.5", "--"]
SUPERVISED = ["bash", str(ROOT / "launch" / "elastic.sh"), *DISCOVER_4]


@dataclass(frozen=True)
class Case:
    ranks: int
    victim: int
    lost: int  # ranks the kill removes: Horovod Elastic removes the victim's host, both its workers
    launcher: list[str]
    mode: list[str]
    elastic: bool = False  # horovodrun in elastic mode: its own flags instead of mpirun's
    regrows: bool = False  # under launch/elastic.sh, which restarts the job on as many ranks
    kill_at: float = 0.4  # of the run's epochs
    example: bool = False  # your own loop (Horovod's elastic example, ported) instead of pcasgd train

    def launch_flags(self, ranks: int) -> list[str] | None:
        if self.regrows:
            return []  # launch/mpirun.sh, run by the supervisor, sets ULFM's flags and -n
        return ["-np", str(ranks), "--min-np", "1"] if self.elastic else None


CASES = {
    "4": Case(4, 2, 1, [mpirun_path()], PCASGD),
    "0": Case(4, 0, 1, [mpirun_path()], PCASGD),
    "8": Case(8, 5, 1, [mpirun_path()], PCASGD),
    "regrow": Case(4, 2, 0, SUPERVISED, PCASGD, regrows=True, kill_at=0.6),
    "rejoin": Case(4, 2, 0, [mpirun_path()], [*PCASGD, "--rejoin"], kill_at=0.6),
    "api": Case(4, 2, 1, [], [], example=True),
    "hosts": Case(4, 3, 1, HOSTS, PCASGD),
    "hosts-horovod": Case(4, 2, 2, HOSTS_HOROVOD, SSGD_HOROVOD, elastic=True),
    "4-horovod": Case(4, 2, 1, HOROVOD_PER_HOST, SSGD_HOROVOD, elastic=True),
    "api-horovod": Case(4, 2, 1, HOROVOD_PER_HOST, [], elastic=True, example=True),
}


def run(case: str, seed: int, killed: bool, args: argparse.Namespace) -> dict:
    chosen = CASES[case]
    ranks = chosen.ranks if killed else chosen.ranks - chosen.lost
    out = args.out / f"{case}-{'killed' if killed else 'baseline'}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    remove_stale_session_dirs()  # killed jobs leave them, and they fail a later mpirun
    if chosen.example:
        return run_example(chosen, case, seed, ranks, killed, out, args)
    flags = [*chosen.mode, "--dataset", "fashion-mnist", "--model", "lenet5", "--epochs", str(args.epochs)]
    flags += ["--seed", str(seed), "--checkpoint-every", "1" if chosen.regrows else "0"]
    kill_after = round(chosen.kill_at * args.epochs)
    kills = [(chosen.victim, 0.0)] if killed else []
    env = open_mpi_env(str(ROOT))
    program = [] if chosen.regrows else None
    started = time.monotonic()
    done = train_and_kill(
        chosen.launcher,
        ranks,
        out,
        flags,
        kills,
        kill_after,
        env,
        args.timeout,
        chosen.launch_flags(ranks),
        program=program,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{out}: exit {done.returncode}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    result = {"case": case, "seed": seed, "ranks": ranks, "accuracy": summary["final"]["test_accuracy"], "wall_s": wall}
    if killed and chosen.regrows:
        restarts = [json.loads(line) for line in (out / "restarts.jsonl").read_text().splitlines()]
        result.update(restarts=len(restarts), final_ranks=len(summary["iterations"]), kill_to_first_step_s=None)
        result["recovery_s"] = None
    elif killed:
        (event,) = summary["world_changes"]
        # None: the run ended (a rank reached its last epoch) before rank 0 stepped on the new world
        first_step = event["first_step_at"]
        result["kill_to_first_step_s"] = None if first_step is None else first_step - done.killed_at[0]
        result["recovery_s"] = event["recovered_at"] - event["noticed_at"]
        result["killed_at_iteration"] = event["iteration"]
        if "rejoined" in event:  # the replacement says when it stepped, relative to the notice
            stepped = re.search(r"took its first step at iteration \d+, ([\d.]+) s after", done.stderr)
            noticed = event["noticed_at"] - done.killed_at[0]
            result["kill_to_newcomer_step_s"] = None if stepped is None else noticed + float(stepped.group(1))
            result["spawn_s"] = event["spawn_seconds"]
    print(json.dumps(result), flush=True)
    return result


def run_example(chosen: Case, case: str, seed: int, ranks: int, killed: bool, out: Path, args) -> dict:
    """One run of Horovod's elastic example: as ported (``api``), or Horovod's own under Horovod
    Elastic (``api-horovod``)."""
    data = torchvision_mnist(args.out / "mnist")
    started = time.monotonic()
    victim = chosen.victim if killed else None
    horovod = chosen.launcher if chosen.elastic else None
    done = run_elastic_example(ranks, data, seed, victim, open_mpi_env(str(ROOT)), args.timeout, out, horovod)
    wall = time.monotonic() - started
    if done.returncode != 0 or done.accuracy is None:
        raise RuntimeError(f"{case} seed {seed}: exit {done.returncode}\n{done.stderr[-3000:]}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "stdout.log").write_text(done.stdout)
    (out / "stderr.log").write_text(done.stderr)
    result = {"case": case, "seed": seed, "ranks": ranks, "accuracy": done.accuracy / 100, "wall_s": wall}
    if killed:  # pcasgd says when it noticed and recovered (Horovod does not); both print progress
        recovered = re.search(r"noticed and recovered in ([\d.]+) s", done.stderr)
        progressed = None if done.progressed_at is None else done.progressed_at - done.killed_at
        result["kill_to_first_step_s"] = progressed
        result["recovery_s"] = None if recovered is None else float(recovered.group(1))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "faults")
    args = parser.parse_args()
    args.out = args.out.resolve()
    results = []
    for seed in args.seeds:  # interleaved: the machine's load falls on both kinds of run alike
        for case in args.cases:
            for killed in (True, False):
                results.append(run(case, seed, killed, args))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| case | seed | killed run | baseline (the survivors' number of ranks) | difference "
        "| kill to first step (s) | kill to the replacement's first step (s) | wall-time ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        differences, delays, joins, ratios = [], [], [], []
        for seed in args.seeds:
            killed = next(r for r in results if r["case"] == case and r["seed"] == seed and "recovery_s" in r)
            baseline = next(r for r in results if r["case"] == case and r["seed"] == seed and "recovery_s" not in r)
            difference = killed["accuracy"] - baseline["accuracy"]
            differences.append(difference)
            ratios.append(killed["wall_s"] / baseline["wall_s"])
            delay = killed["kill_to_first_step_s"]
            if delay is not None:
                delays.append(delay)
            joined = killed.get("kill_to_newcomer_step_s")
            if joined is not None:
                joins.append(joined)
            shown = "restarted" if CASES[case].regrows else "run over" if delay is None else f"{delay:.2f}"
            print(
                f"| {case} | {seed} | {killed['accuracy']:.4f} | {baseline['accuracy']:.4f} | {difference:+.4f} "
                f"| {shown} | {'-' if joined is None else f'{joined:.2f}'} | {ratios[-1]:.2f} |"
            )
        median_delay = f"{statistics.median(delays):.2f}" if delays else "-"
        median_join = f"{statistics.median(joins):.2f}" if joins else "-"
        ratio = statistics.median(ratios)
        median = f"{statistics.median(differences):+.4f} | {median_delay} | {median_join} | {ratio:.2f}"
        print(f"| {case} | median | | | {median} |")


if __name__ == "__main__":
    main()
