"""Training throughput of examples/synthetic_benchmark.py (Horovod's synthetic benchmark, ported)
under pcasgd and under Horovod, side by side.

    python benchmarks/synthetic_throughput.py [--ranks 2] [--model resnet18] [--batch-size 16] \
        [--repeats 3] [--contenders pcasgd ssgd horovod] [--out runs/synthetic.json]

Each repeat runs every contender once, in turn (alternating, so that the load of this shared
machine falls on all of them alike): ``pcasgd`` and ``ssgd`` are pcasgd's modes started by
``launch/mpirun.sh``, ``horovod`` is Horovod's own DistributedOptimizer (Gloo, as
``launch/horovodrun.sh`` starts it). Every run uses each rank's own BatchNorm2d (Horovod's
SyncBatchNorm needs a GPU) and one thread per rank. Reported: the total img/s of each run and,
per contender, the median over the repeats and its ratio to Horovod's median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/synthetic_benchmark.py"
CONTENDERS = ("pcasgd", "ssgd", "horovod")
TOTAL = re.compile(r"Total img/sec on \d+ \w+\(s\): ([0-9.]+)")


def command(contender: str, args: argparse.Namespace) -> list[str]:
    flags = ["--model", args.model, "--batch-size", str(args.batch_size), "--no-cuda", "--local-bn"]
    flags += ["--num-warmup-batches", str(args.warmup), "--num-batches-per-iter", str(args.batches)]
    flags += ["--num-iters", str(args.iters)]
    if contender == "horovod":
        horovodrun = [str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", str(args.ranks)]
        return [*horovodrun, "-H", f"localhost:{args.ranks}", sys.executable, EXAMPLE, *flags, "--horovod"]
    return ["bash", "launch/mpirun.sh", "-n", str(args.ranks), EXAMPLE, *flags, "--mode", contender]


def throughput(contender: str, args: argparse.Namespace) -> float:
    """The run's total img/s (every rank together), as the example reports it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command(contender, args), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = TOTAL.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{contender} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return float(found.group(1))


def table(results: dict[str, list[float]]) -> str:
    reference = statistics.median(results["horovod"]) if "horovod" in results else None
    lines = ["| contender | img/s per run | median img/s | / horovod |", "|---|---|---|---|"]
    for contender, rates in results.items():
        median = statistics.median(rates)
        ratio = f"{median / reference:.2f}" if reference else "n/a"
        lines.append(f"| {contender} | {', '.join(f'{r:.1f}' for r in rates)} | {median:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--batches", type=int, default=5, help="batches per timed iteration")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contender, alternating")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic.json"))
    args = parser.parse_args()
    results: dict[str, list[float]] = {c: [] for c in args.contenders}
    for repeat in range(args.repeats):
        for contender in args.contenders:
            results[contender].append(throughput(contender, args))
            print(f"repeat {repeat}: {contender} {results[contender][-1]:.1f} img/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.write_text(json.dumps({"settings": settings, "img_per_second": results}, indent=1))
    print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
