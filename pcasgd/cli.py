"""The ``pcasgd`` command line. Bad input ends in one ``pcasgd: error: ...`` line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from pcasgd import __version__
from pcasgd.algorithms.config import CHOICES, MODES, AlgorithmConfig
from pcasgd.app.data import DATASETS
from pcasgd.app.models import MODELS
from pcasgd.app.progress import EpochProgress
from pcasgd.app.train import BACKENDS, RunConfig, run_training
from pcasgd.delays import ACCEPTED_FORMS
from pcasgd.errors import PcasgdError, TrainingFailedError
from pcasgd.topology import TOPOLOGY_FORMS, WEIGHT_SCHEMES


def _number(kind: type, minimum: float | None = None, maximum: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a{'n integer' if kind is int else ' number'}, got {text!r}"
            ) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


# (flag, AlgorithmConfig field, argparse keyword arguments)
ALGORITHM_FLAGS = [
    ("--lr", "lr", {"type": _number(float, 1e-12), "help": "learning rate alpha"}),
    ("--momentum", "momentum", {"type": _number(float, 0.0, 0.999999), "help": "momentum mu (default: per mode)"}),
    ("--theta", "theta", {"type": _number(float, 0.0, 1.0), "help": "pcasgd tradeoff: 1 predict-only, 0 clip-only"}),
    ("--predictor", "predictor", {"choices": CHOICES["predictor"], "help": "pcasgd predictor of stale neighbours"}),
    (
        "--clip-weights",
        "clip_weights",
        {"choices": CHOICES["clip_weights"], "help": "weights after dropping stale neighbours"},
    ),
    ("--lam", "lam", {"type": _number(float, 0.0), "help": "Hessian-approximation factor lambda (default: per mode)"}),
    (
        "--lam-adaptive",
        "lam_adaptive",
        {"action": "store_true", "help": "lambda / sqrt(MeanSquare + eps), as DC-ASGD-a"},
    ),
    ("--ms-decay", "ms_decay", {"type": _number(float, 0.0, 0.999999), "help": "MeanSquare decay m"}),
    ("--tau-fresh", "tau_fresh", {"type": _number(int, 0), "help": "largest staleness still counted fresh"}),
    (
        "--pv-warmup-epochs",
        "pv_warmup_epochs",
        {"type": _number(float, 0.0), "help": "pcasgd-pv runs asgd before this"},
    ),
    ("--pv-scope", "pv_scope", {"choices": CHOICES["pv_scope"], "help": "pcasgd-pv decides per model or per tensor"}),
    ("--history", "history", {"type": _number(int, 1), "help": "own snapshots kept for the draft predictor"}),
    ("--sasgd-n", "sasgd_n", {"type": _number(int, 1), "help": "n of n-softsync (1 = hardsync)"}),
    ("--sasgd-lr", "sasgd_lr", {"choices": CHOICES["sasgd_lr"], "help": "sasgd learning-rate rule"}),
    (
        "--odsgd-local-lr",
        "odsgd_local_lr",
        {"type": _number(float, 0.0), "help": "odsgd local step size (default: --lr)"},
    ),
    ("--odsgd-warmup", "odsgd_warmup", {"type": _number(int, 0), "help": "odsgd iterations run as plain ssgd"}),
    ("--odsgd-local-opt", "odsgd_local_opt", {"choices": CHOICES["odsgd_local_opt"], "help": "odsgd local optimizer"}),
    ("--odsgd-no-overlap", "odsgd_overlap", {"action": "store_false", "help": "odsgd: block on each allreduce"}),
    ("--comm", "comm", {"choices": CHOICES["comm"], "help": "ssgd on MPI: MPI allreduce or Horovod"}),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcasgd", description="Decentralized asynchronous training (PC-ASGD).")
    parser.add_argument("--version", action="version", version=f"pcasgd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = RunConfig()
    train.add_argument("--backend", choices=BACKENDS, default=run.backend, help="engine")
    train.add_argument("--agents", type=_number(int, 1), default=None, help="default 4, or the MPI world size")
    train.add_argument("--mode", choices=MODES, default=run.algorithm.mode, help="training mode")
    train.add_argument("--topology", default=run.topology, help=f"graph: {TOPOLOGY_FORMS}")
    train.add_argument("--weights", choices=("auto", *WEIGHT_SCHEMES), default=run.weights, help="mixing weights")
    train.add_argument("--delay", default=run.delay, help=f"delay/straggler spec: {ACCEPTED_FORMS}")
    train.add_argument("--dataset", choices=DATASETS, default=run.dataset)
    train.add_argument("--model", choices=MODELS, default=run.model)
    train.add_argument("--epochs", type=_number(int, 1), default=run.epochs)
    train.add_argument("--batch-size", type=_number(int, 1), default=run.batch_size, help="per agent")
    train.add_argument("--seed", type=_number(int, 0), default=run.seed)
    train.add_argument("--out", type=Path, default=None, help="run directory (default: runs/MODE-seedS)")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    train.add_argument(
        "--deterministic", action="store_true", help="mpi: lock-step iterations that reproduce --backend sim"
    )
    train.add_argument(
        "--deadline", type=_number(float, 0.001), default=run.deadline, help="mpi: seconds any wait may take"
    )
    train.add_argument(
        "--shared-windows",
        action="store_true",
        help="mpi, decentralized modes: allocate the windows with MPI.Win.Allocate_shared (one node only)",
    )
    train.add_argument(
        "--progress-thread",
        action="store_true",
        help="mpi, odsgd: a helper thread advances the allreduce in flight while the rank computes",
    )
    defaults = {f.name: f.default for f in fields(AlgorithmConfig)}
    group = train.add_argument_group("algorithm options")
    for flag, name, options in ALGORITHM_FLAGS:
        default = True if options.get("action") == "store_false" else defaults[name]
        group.add_argument(flag, dest=name, default=default, **options)
    return parser


def _mpi_world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def run_config_from(args: argparse.Namespace) -> RunConfig:
    algorithm = AlgorithmConfig(mode=args.mode, **{name: getattr(args, name) for _, name, _ in ALGORITHM_FLAGS})
    agents = args.agents
    if agents is None:
        agents = RunConfig().agents
        if args.backend == "mpi":  # every rank an agent; parameter-server modes: rank 0 serves
            agents = _mpi_world().Get_size() - (1 if algorithm.family == "server" else 0)
    return RunConfig(
        algorithm=algorithm,
        backend=args.backend,
        agents=agents,
        topology=args.topology,
        weights=args.weights,
        delay=args.delay,
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        deterministic=args.deterministic,
        deadline=args.deadline,
        progress_thread=args.progress_thread,
        shared_windows=args.shared_windows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = _mpi_world().Get_rank() if args.backend == "mpi" else 0
    where = f" (rank {rank})" if args.backend == "mpi" else ""
    if args.backend == "mpi":
        signal.signal(signal.SIGTERM, lambda signum, _: _stopped_by_launcher(rank, signum))
    try:
        config = run_config_from(args)
        out = args.out if args.out is not None else Path("runs") / f"{config.algorithm.mode}-seed{config.seed}"
        if rank == 0:
            print(f"pcasgd {__version__}: {json.dumps(_describe(config))} -> {out}", file=sys.stderr)
        summary = run_training(config, out, overwrite=args.overwrite, on_epoch=EpochProgress(config.epochs))
    except TrainingFailedError as error:
        print(f"pcasgd: run failed{where}: {error}; metrics so far are in the run directory", file=sys.stderr)
        if args.backend == "mpi" and _mpi_world().Get_size() > 1:
            sys.stderr.flush()
            _mpi_world().Abort(1)  # end the whole job now rather than at the other ranks' deadlines
        return 1
    except PcasgdError as error:
        print(f"pcasgd: error{where}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcasgd: interrupted{where}; metrics so far are in the run directory", file=sys.stderr)
        return 130
    if summary is None:
        return 0
    final = summary["final"]
    print(
        f"final test accuracy {final['test_accuracy']:.4f} (agents {final['agent_accuracy_min']:.4f}.."
        f"{final['agent_accuracy_max']:.4f}), consensus distance {final['consensus_distance_mean']:.4g}, "
        f"staleness mean {summary['staleness']['mean']:.2f} max {summary['staleness']['max']}, "
        f"{final['wall_seconds']:.1f}s; run files in {out}"
    )
    return 0


def _stopped_by_launcher(rank: int, signum: int) -> None:
    sys.stderr.write(
        f"pcasgd: error (rank {rank}): stopped by the launcher (signal {signum}); "
        "another rank has most likely failed: see its message above\n"
    )
    sys.stderr.flush()
    os._exit(128 + signum)


def _describe(config: RunConfig) -> dict:
    algorithm = config.algorithm
    return {
        "backend": config.backend,
        "mode": algorithm.mode,
        "agents": config.agents,
        "topology": config.topology,
        "delay": config.delay,
        "dataset": config.dataset,
        "model": config.model,
        "epochs": config.epochs,
        "lr": algorithm.lr,
        "seed": config.seed,
    }


if __name__ == "__main__":
    sys.exit(main())
