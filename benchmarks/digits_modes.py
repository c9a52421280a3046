"""Every mode on digits with the simulator, for each delay spec: a Markdown table of final figures.

    python benchmarks/digits_modes.py --delays none fixed:4 --epochs 10 --agents 4 --topology ring [--flags '--lr 0.1']

Each cell is one real ``pcasgd train --backend sim`` run (in-process, same code path as the CLI).
Extra ``pcasgd train`` flags for one mode can be given as ``--extra MODE='--flag value'``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from pcasgd.algorithms import MODES
from pcasgd.app.train import run_training
from pcasgd.cli import build_parser, run_config_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--delays", nargs="+", default=["none", "fixed:4"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flags", default="", help="extra pcasgd train flags for every run, e.g. '--lr 0.1'")
    parser.add_argument("--extra", action="append", default=[], metavar="MODE='FLAGS'")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.extra:
        mode, _, flags = item.partition("=")
        extra[mode] = shlex.split(flags)

    print("| mode | delay | test accuracy | consensus distance (mean) | staleness mean / max | wall s | extra flags |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            for delay in args.delays:
                flags = ["train", "--mode", mode, "--delay", delay, "--epochs", str(args.epochs)]
                flags += ["--agents", str(args.agents), "--topology", args.topology, "--seed", str(args.seed)]
                flags += shlex.split(args.flags) + extra.get(mode, [])
                config = run_config_from(build_parser().parse_args(flags))
                summary = run_training(config, Path(scratch) / f"{mode}-{delay}")
                final = summary["final"]
                print(
                    f"| {mode} | {delay} | {final['test_accuracy']:.4f} | {final['consensus_distance_mean']:.4f} | "
                    f"{summary['staleness']['mean']:.2f} / {summary['staleness']['max']} | "
                    f"{final['wall_seconds']:.2f} | {' '.join(extra.get(mode, []))} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
