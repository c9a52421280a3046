"""Time to accuracy with a straggler: pcasgd against ssgd, real MPI runs of ``pcasgd train``.

    python benchmarks/time_to_accuracy.py [--ranks 2] [--straggler 2] [--seeds 0 1 2] [--out runs/tta]

For each seed, ``ssgd`` trains ``--ssgd-epochs`` epochs with the last rank slowed ``--straggler``
times (it waits for that rank every step); its final test accuracy A and training time T_ssgd
are the target. ``pcasgd`` (asynchronous) then trains with the same straggler for
``--pcasgd-epochs`` epochs of its fastest rank, recording the averaged model every
``--eval-every`` iterations. Reported: T_pcasgd, the training time of the first pcasgd record at
or above A, and T_pcasgd / T_ssgd; pcasgd's accuracy at T_ssgd (its last record by then) and at
its end, against A. Times are the runs' own ``wall_seconds`` (training, records included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(mode: str, epochs: int, seed: int, args: argparse.Namespace, lr: float | None = None) -> list[dict]:
    """One ``pcasgd train --backend mpi`` run; its metric records."""
    from pcasgd.runtime.launch import mpirun_path, open_mpi_env

    out = args.out / f"{mode}-seed{seed}"
    command = [mpirun_path() or "mpirun", "-n", str(args.ranks), sys.executable, "-m", "pcasgd.cli", "train"]
    command += ["--backend", "mpi", "--mode", mode, "--dataset", args.dataset, "--model", args.model]
    command += ["--epochs", str(epochs), "--seed", str(seed), "--eval-every", str(args.eval_every)]
    command += ["--delay", f"straggler:{args.ranks - 1}={args.straggler}", "--checkpoint-every", "0"]
    command += ["--out", str(out), "--overwrite"] + (["--lr", str(lr)] if lr is not None else [])
    done = subprocess.run(command, env=open_mpi_env(str(ROOT)), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} seed {seed} failed (exit {done.returncode}): {done.stderr[-800:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def compare_seed(seed: int, args: argparse.Namespace) -> dict:
    ssgd = train("ssgd", args.ssgd_epochs, seed, args, lr=args.ssgd_lr)
    pcasgd = train("pcasgd", args.pcasgd_epochs, seed, args)
    target, ssgd_time = ssgd[-1]["test_accuracy"], ssgd[-1]["wall_seconds"]
    reached = [r["wall_seconds"] for r in pcasgd if r["test_accuracy"] >= target]
    by_then = [r for r in pcasgd if r["wall_seconds"] <= ssgd_time]
    return {
        "seed": seed,
        "ssgd_accuracy": target,
        "ssgd_seconds": ssgd_time,
        "pcasgd_seconds_to_target": reached[0] if reached else None,
        "ratio": reached[0] / ssgd_time if reached else None,
        "pcasgd_accuracy_at_ssgd_time": by_then[-1]["test_accuracy"] if by_then else None,
        "pcasgd_final_accuracy": pcasgd[-1]["test_accuracy"],
        "pcasgd_seconds": pcasgd[-1]["wall_seconds"],
        "curves": {"ssgd": _curve(ssgd), "pcasgd": _curve(pcasgd)},
    }


def _curve(records: list[dict]) -> list[tuple[float, float]]:
    return [(r["wall_seconds"], r["test_accuracy"]) for r in records]


def _cell(value: float | None, text: str) -> str:
    return "not reached" if value is None else text.format(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--straggler", type=float, default=2.0, help="the last rank's slowdown")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--ssgd-epochs", type=int, default=3)
    parser.add_argument("--pcasgd-epochs", type=int, default=5, help="epochs of pcasgd's fastest rank")
    parser.add_argument(
        "--ssgd-lr", type=float, default=None, help="ssgd's learning rate (default: the mode's; e.g. N x 0.1)"
    )
    parser.add_argument("--eval-every", type=int, default=200, help="iterations between records")
    parser.add_argument("--out", type=Path, default=Path("runs/tta"))
    args = parser.parse_args()
    print(
        f"{args.dataset}, {args.model}, {args.ranks} ranks, rank {args.ranks - 1} slowed {args.straggler:g}x; "
        f"ssgd {args.ssgd_epochs} epochs (lr {args.ssgd_lr or 'default'}), "
        f"pcasgd {args.pcasgd_epochs} epochs of its fastest rank\n"
    )
    print(
        "| seed | ssgd final accuracy | ssgd time (s) | pcasgd time to it (s) | ratio "
        "| pcasgd accuracy at ssgd's time | pcasgd final accuracy (time s) |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for seed in args.seeds:
        row = compare_seed(seed, args)
        rows.append(row)
        print(
            f"| {seed} | {row['ssgd_accuracy']:.4f} | {row['ssgd_seconds']:.1f} | "
            f"{_cell(row['pcasgd_seconds_to_target'], '{:.1f}')} | {_cell(row['ratio'], '{:.3f}')} | "
            f"{_cell(row['pcasgd_accuracy_at_ssgd_time'], '{:.4f}')} | "
            f"{row['pcasgd_final_accuracy']:.4f} ({row['pcasgd_seconds']:.1f}) |",
            flush=True,
        )
    ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
    if ratios:
        print(f"\ntime-to-accuracy ratio pcasgd / ssgd: mean {statistics.mean(ratios):.3f} over {len(ratios)} seeds")
    (args.out / "time_to_accuracy.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
