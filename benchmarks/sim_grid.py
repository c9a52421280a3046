"""Run a grid of simulator trainings and print a Markdown table of final figures.

Rows are variants (named sets of ``pcasgd train`` flags) x delay specs; each cell is the mean
(and standard deviation over ``--seeds``) of real ``pcasgd train --backend sim`` runs, made
in-process through the same code path as the CLI.

    # every mode, with and without delay (the default variants are the modes):
    python benchmarks/sim_grid.py --delays none fixed:4
    # two options of one mode, over three seeds:
    python benchmarks/sim_grid.py --common '--mode pcasgd' \\
        --variant draft='--predictor draft' --variant taylor='--predictor taylor' \\
        --delays fixed:4 uniform:0..8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from pcasgd.algorithms import MODES
from pcasgd.app.train import run_training
from pcasgd.cli import build_parser, run_config_from
from pcasgd.errors import DivergenceError


def _spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME='FLAGS'")
    parser.add_argument("--common", default="", help="flags for every run, e.g. '--lr 0.1 --epochs 10'")
    parser.add_argument("--delays", nargs="+", default=["none", "fixed:4"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args(argv)
    variants = [item.split("=", 1) for item in args.variant] or [[mode, f"--mode {mode}"] for mode in MODES]
    if any(len(variant) != 2 for variant in variants):
        parser.error("each --variant must be NAME='FLAGS' (NAME without '=')")

    print(f"common flags: `{args.common or '(defaults)'}`; seeds {args.seeds}\n")
    print(
        "| variant | delay | test accuracy (mean model) | worst agent | consensus distance "
        "| staleness mean / max | wall s | diverged |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, flags in variants:
            for delay in args.delays:
                summaries, diverged = [], 0
                for seed in args.seeds:
                    argv_run = ["train", *shlex.split(args.common), *shlex.split(flags)]
                    argv_run += ["--delay", delay, "--seed", str(seed)]
                    config = run_config_from(build_parser().parse_args(argv_run))
                    try:
                        summaries.append(run_training(config, Path(scratch) / f"{name}-{delay}-{seed}", overwrite=True))
                    except DivergenceError:
                        diverged += 1
                if not summaries:
                    print(f"| {name} | {delay} | - | - | - | - | - | {diverged}/{len(args.seeds)} |", flush=True)
                    continue
                finals = [s["final"] for s in summaries]
                print(
                    f"| {name} | {delay} | {_spread([f['test_accuracy'] for f in finals], 4)} | "
                    f"{_spread([f['agent_accuracy_min'] for f in finals], 4)} | "
                    f"{_spread([f['consensus_distance_mean'] for f in finals], 3)} | "
                    f"{_spread([s['staleness']['mean'] for s in summaries], 2)} / "
                    f"{max(s['staleness']['max'] for s in summaries)} | "
                    f"{_spread([f['wall_seconds'] for f in finals], 2)} | {diverged}/{len(args.seeds)} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
