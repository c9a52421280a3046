"""The ``pcasgd`` command line. Bad input ends in one ``pcasgd: error: ...`` line and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path
from typing import NoReturn

from pcasgd import __version__, log
from pcasgd.algorithms.config import CHOICES, MODES, AlgorithmConfig
from pcasgd.app.compare import Variant, compare, parse_variant, strip_options
from pcasgd.app.config_file import config_argv
from pcasgd.app.data import DATASETS
from pcasgd.app.models import MODELS
from pcasgd.app.plots import plot_runs
from pcasgd.app.progress import EpochProgress
from pcasgd.app.run_config import SEED_MAX, RunConfig
from pcasgd.app.train import run_training, start_mpi_under_deadline
from pcasgd.delays import ACCEPTED_FORMS
from pcasgd.delays import parse as parse_delays
from pcasgd.dispatch import BACKENDS, agents_in
from pcasgd.errors import ConfigError, PcasgdError, RunFilesError, TrainingFailedError
from pcasgd.runtime.device import DEVICES, HOST_STAGING
from pcasgd.runtime.launch import failure_detector_settings, launcher_rank
from pcasgd.topology import TOPOLOGY_FORMS, WEIGHT_SCHEMES


def _number(kind: type, minimum: float | None = None, maximum: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a{'n integer' if kind is int else ' number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


# (flag, AlgorithmConfig field, argparse keyword arguments)
ALGORITHM_FLAGS = [
    ("--lr", "lr", {"type": _number(float, 1e-12), "help": "learning rate alpha"}),
    (
        "--lr-schedule",
        "lr_schedule",
        {"help": "constant, step:E1,E2,... (times --lr-decay at each epoch listed) or cosine[:EPOCHS]"},
    ),
    ("--lr-decay", "lr_decay", {"type": _number(float, 1e-12, 1.0), "help": "factor of each step of the schedule"}),
    (
        "--lr-warmup-epochs",
        "lr_warmup_epochs",
        {"type": _number(float, 0.0), "help": "linear warm-up from lr/10 over these epochs"},
    ),
    ("--weight-decay", "weight_decay", {"type": _number(float, 0.0), "help": "L2 term: g + weight_decay * x"}),
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
    (
        "--age-fresh",
        "age_fresh",
        {"type": _number(float, 0.0), "help": "largest neighbour-step age still counted fresh (pcasgd family)"},
    ),
    (
        "--age-max",
        "age_max",
        {"type": _number(float, 1e-9), "help": "cap on the age a predictor extrapolates over"},
    ),
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
    (
        "--compression",
        "compression",
        {"choices": CHOICES["compression"], "help": "send snapshots (ssgd/odsgd: gradients) in half precision"},
    ),
    (
        "--overlap",
        "overlap",
        {"action": "store_true", "help": "decentralized modes: read the neighbours while the gradient is computed"},
    ),
]


def build_parser() -> argparse.ArgumentParser:
    return command_parsers()[0]


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad flag ends as every other refusal does: one ``pcasgd: error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pcasgd: error: {message} (see {self.prog} --help)\n")


def command_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``pcasgd`` parser and its ``train``, ``compare`` and ``plot`` sub-parsers."""
    parser = OneLineErrors(prog="pcasgd", description="Decentralized asynchronous training (PC-ASGD).")
    parser.add_argument("--version", action="version", version=f"pcasgd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.ArgumentDefaultsHelpFormatter
    train = commands.add_parser("train", help="train a model", formatter_class=formatter)
    _add_train_arguments(train)
    compare = commands.add_parser(
        "compare",
        help="run a grid of modes x delays x seeds; write a Markdown table and a figure",
        formatter_class=formatter,
    )
    compare.add_argument("--modes", nargs="+", default=[], metavar="MODE", help="modes to compare")
    compare.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a named set of train flags to compare, e.g. 'theta 0.25=--mode pcasgd --theta 0.25' (repeatable)",
    )
    compare.add_argument("--delays", nargs="+", default=["none"], metavar="SPEC", help="delay specs to compare")
    compare.add_argument("--seeds", nargs="+", type=_number(int, 0, SEED_MAX), default=[0], metavar="SEED")
    _add_train_arguments(compare, grid=True)
    supervise = commands.add_parser(
        "supervise",
        help="keep a `launch/mpirun.sh` training job at the size its hosts allow (launch/elastic.sh)",
        formatter_class=formatter,
    )
    supervise.add_argument(
        "--hosts-script",
        required=True,
        help="an executable printing one 'host:slots' (or 'host') line per host, as Horovod's host discovery",
    )
    supervise.add_argument("--min-ranks", type=_number(int, 2), default=2, help="start and restart with no fewer")
    supervise.add_argument("--max-restarts", type=_number(int, 0), default=3, help="restarts after a failed job")
    supervise.add_argument("--poll", type=_number(float, 0.1), default=1.0, help="seconds between looks")
    supervise.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then the `pcasgd train` flags")
    plot = commands.add_parser("plot", help="PNG figures of finished runs", formatter_class=formatter)
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (pcasgd train --out)")
    plot.add_argument("--out", type=Path, default=None, help="where the figures go (default: the first RUN_DIR)")
    return parser, {"train": train, "compare": compare, "plot": plot}


def _add_train_arguments(train: argparse.ArgumentParser, grid: bool = False) -> None:
    """The flags of one training run; ``grid``: for ``compare``, which sets mode, delay and seed per cell."""
    run = RunConfig()
    train.add_argument("--config", type=Path, default=None, help="YAML file of flag: value settings (flags win)")
    train.add_argument("--backend", choices=BACKENDS, default=run.backend, help="engine")
    train.add_argument("--agents", type=_number(int, 1), default=None, help="default 4, or the MPI world size")
    if not grid:
        train.add_argument("--mode", choices=MODES, default=run.algorithm.mode, help="training mode")
    train.add_argument("--topology", default=run.topology, help=f"graph: {TOPOLOGY_FORMS}")
    train.add_argument("--weights", choices=("auto", *WEIGHT_SCHEMES), default=run.weights, help="mixing weights")
    if not grid:
        train.add_argument("--delay", default=run.delay, help=f"delay/straggler spec: {ACCEPTED_FORMS}")
    train.add_argument("--dataset", choices=DATASETS, default=run.dataset)
    train.add_argument("--data-dir", default=None, help="folder (or archive) holding the dataset's files")
    train.add_argument("--download", action="store_true", help="download the dataset with torchvision into --data-dir")
    train.add_argument("--partition", default=run.partition, help="iid, or dirichlet:ALPHA for non-IID shards")
    train.add_argument("--model", default=run.model, help=f"one of {', '.join(MODELS)}")
    for split, verb in (("train", "train"), ("test", "evaluate")):
        train.add_argument(
            f"--{split}-samples",
            type=_number(int, 0),
            default=getattr(run, f"{split}_samples"),
            metavar="N",
            help=f"{verb} on a fixed subset of N {split} images, the same for every seed (0: all)",
        )
    train.add_argument("--epochs", type=_number(int, 1), default=run.epochs)
    train.add_argument("--batch-size", type=_number(int, 1), default=run.batch_size, help="per agent")
    if not grid:
        train.add_argument("--seed", type=_number(int, 0, SEED_MAX), default=run.seed)
    where = "grid directory (default: runs/compare)" if grid else "run directory (default: runs/MODE-seedS)"
    train.add_argument("--out", type=Path, default=None, help=where)
    if not grid:
        train.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
        train.add_argument(
            "--resume",
            type=Path,
            default=None,
            metavar="RUN_DIR",
            help="continue the run in RUN_DIR from its newest checkpoint (same settings; --epochs may grow)",
        )
    train.add_argument(
        "--checkpoint-every",
        type=_number(int, 0),
        default=run.checkpoint_every,
        metavar="K",
        help="checkpoint every K epochs (0: never); each rank writes RUN/checkpoints/rank-R/",
    )
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (OUT/tensorboard)")
    train.add_argument(
        "--eval-every",
        type=_number(int, 0),
        default=run.eval_every,
        metavar="K",
        help="also record metrics every K iterations inside an epoch (0: once per epoch)",
    )
    train.add_argument(
        "--deterministic", action="store_true", help="mpi: lock-step iterations that reproduce --backend sim"
    )
    train.add_argument(
        "--deadline", type=_number(float, 0.001), default=run.deadline, help="mpi: seconds any wait may take"
    )
    train.add_argument(
        "--startup-deadline",
        type=_number(float, 0.001),
        default=run.startup_deadline,
        help="mpi: seconds the start may take (every rank starting MPI; rank 0 finding, decoding or downloading "
        "the dataset while the others wait)",
    )
    train.add_argument(
        "--shared-windows",
        action="store_true",
        help="mpi, decentralized modes: allocate the windows with MPI.Win.Allocate_shared (one node only)",
    )
    train.add_argument(
        "--fault-tolerant",
        action="store_true",
        help="mpi, asynchronous decentralized and parameter-server modes: when a rank dies, the others shrink "
        "the world, rebuild the graph over themselves (a server forgets dead workers; a dead rank 0's "
        "recording passes to the lowest survivor) and go on (Open MPI's ULFM: launch/mpirun.sh --fault-tolerant); "
        "ssgd --comm horovod: Horovod Elastic (horovodrun with a host-discovery script)",
    )
    train.add_argument(
        "--rejoin",
        action="store_true",
        help="with --fault-tolerant, asynchronous decentralized modes: the survivors of a death start a "
        "replacement process (MPI_Comm_spawn) that takes the dead agent's place, healed from a neighbour's "
        "weights and momentum; the world grows back to its size and training goes on",
    )
    train.add_argument(
        "--progress-thread",
        action="store_true",
        help="mpi: a helper thread keeps one-sided reads and odsgd's allreduce moving while the rank computes "
        "(needed across nodes with osc/ucx or osc/rdma without RDMA hardware)",
    )
    train.add_argument(
        "--device",
        choices=DEVICES,
        default=run.device,
        help="where each rank computes: cuda puts rank r on GPU local_rank %% device_count (local rank from "
        "mpirun, srun or horovodrun); auto: cuda when there is one",
    )
    train.add_argument(
        "--host-staging",
        choices=HOST_STAGING,
        default=run.host_staging,
        help="mpi: copy GPU buffers through pinned host memory for MPI; auto: unless the MPI is CUDA-aware "
        "(Open MPI's MPIX_Query_cuda_support), always: also on the CPU, never: MPI reads GPU memory",
    )
    defaults = {f.name: f.default for f in fields(AlgorithmConfig)}
    group = train.add_argument_group("algorithm options")
    for flag, name, options in ALGORITHM_FLAGS:
        default = True if options.get("action") == "store_false" else defaults[name]
        group.add_argument(flag, dest=name, default=default, **options)


def _world(args: argparse.Namespace):
    from pcasgd.runtime.world import open_world

    return open_world(args.comm)


def run_config_from(args: argparse.Namespace) -> RunConfig:
    options = {name: getattr(args, name) for _, name, _ in ALGORITHM_FLAGS}
    if options["lr_schedule"] == "cosine":  # cosine over the whole run unless told otherwise
        options["lr_schedule"] = f"cosine:{args.epochs}"
    algorithm = AlgorithmConfig(mode=args.mode, **options)
    agents = args.agents
    if agents is None:
        agents = RunConfig().agents
        if args.backend == "mpi":  # every rank an agent; parameter-server modes: rank 0 serves
            agents = agents_in(algorithm.family, _world(args).Get_size())
    return RunConfig(
        algorithm=algorithm,
        backend=args.backend,
        agents=agents,
        topology=args.topology,
        weights=args.weights,
        delay=args.delay,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        partition=args.partition,
        model=args.model,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        deterministic=args.deterministic,
        deadline=args.deadline,
        startup_deadline=args.startup_deadline,
        progress_thread=args.progress_thread,
        shared_windows=args.shared_windows,
        fault_tolerant=args.fault_tolerant,
        rejoin=args.rejoin,
        device=args.device,
        host_staging=args.host_staging,
        tensorboard=args.tensorboard,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
    )


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed command line and the flags it stands for (a ``--config`` file's settings first:
    flags given on the command line win)."""
    parser, commands = command_parsers()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        command_at = argv.index(args.command)
        expanded = config_argv(args.config, commands[args.command])
        argv = [*argv[: command_at + 1], *expanded, *argv[command_at + 1 :]]
        args = parser.parse_args(argv)
    return args, argv


IGNORED_HINTS = {
    "theta": "theta is pcasgd's tradeoff (predict fixes it at 1, clip at 0, pcasgd-pv picks per step)",
    "predictor": "only pcasgd, pcasgd-pv and predict predict stale neighbours",
    "lam": "lambda is read by the taylor, draft, extrapolate and momentum predictors, dcasgd and odsgd's dc "
    "local optimizer",
}


def _refuse_ignored_options(config: RunConfig, train_argv: Sequence[str]) -> None:
    """A ConfigError if ``train_argv`` sets an option the run's mode never reads."""
    _, commands = command_parsers()
    train = commands["train"]
    for action in train._actions:  # only what the command line (or --config) gave remains
        action.default = argparse.SUPPRESS
    given, _ = train.parse_known_args(list(train_argv))
    ignored = config.algorithm.ignored(vars(given))
    if ignored:
        name = ignored[0]
        raise ConfigError(
            f"--{name.replace('_', '-')} does nothing with --mode {config.algorithm.mode}: {IGNORED_HINTS[name]}"
        )


def run_directory(train_argv: Sequence[str], agents: int) -> Path:
    """The directory ``pcasgd train`` with these flags writes its run into, on ``agents`` agents,
    without starting anything (launch/mpirun.sh looks there for the summary after a
    fault-tolerant job, whose mpirun exits 0 whatever became of the ranks)."""
    args, _ = _parse(["train", *train_argv, "--agents", str(agents)])
    return _train_out(args, run_config_from(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log.to_stderr()
    try:
        args, argv = _parse(argv)
        if args.command == "plot":
            return _plot(args)
        if args.command == "compare":
            return _compare(args, argv)
        if args.command == "supervise":
            return _supervise(args)
    except PcasgdError as error:
        print(f"pcasgd: error: {error}", file=sys.stderr)
        return 2
    status = _train(args, argv[argv.index("train") + 1 :])
    if args.backend == "mpi" and args.fault_tolerant:
        from pcasgd.runtime.faults import leave_without_finalize

        leave_without_finalize(status)
    return status


def _supervise(args: argparse.Namespace) -> int:
    from pcasgd.app.supervisor import Supervisor, script_slots

    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    discover = script_slots(args.hosts_script)
    if "--out" not in flags:  # the default depends on the number of agents: keep the first
        flags += ["--out", str(run_directory([*flags, "--backend", "mpi"], max(discover(), args.min_ranks)))]
    train_args, _ = _parse(["train", *flags, "--backend", "mpi"])  # launch/mpirun.sh adds --backend mpi
    out = Path(train_args.out)
    supervisor = Supervisor(discover, flags, out, train_args.epochs, args.min_ranks, args.max_restarts, args.poll)
    return supervisor.run()


def _train(args: argparse.Namespace, train_argv: list[str]) -> int:
    rank, where, deadline = 0, "", None
    try:
        if args.backend == "mpi":
            # A native crash (inside MPI or torch) prints the rank's Python stack before Open MPI's
            # report: under ULFM the job goes on, and mpirun then exits 0 even if every rank crashed.
            faulthandler.enable()
            stopped = partial(_stopped_by_launcher, fault_tolerant=args.fault_tolerant)
            if args.fault_tolerant and args.comm == "mpi":  # read by Open MPI when it starts: now
                for name, value in failure_detector_settings(args.deadline).items():
                    os.environ.setdefault(name, value)
            signal.signal(signal.SIGTERM, lambda signum, _: stopped(launcher_rank(), signum))
            deadline = start_mpi_under_deadline(args.comm, args.deadline, args.startup_deadline)[1]
            rank = _world(args).Get_rank()
            where = f" (rank {rank})"
        config = run_config_from(args)
        _refuse_ignored_options(config, train_argv)
        out = _train_out(args, config)
        _run_directory[:] = [out]
        line = f"pcasgd {__version__} -> {out}: {json.dumps(asdict(config))}"
        announce = partial(print, line, file=sys.stderr) if rank == 0 else None  # once the run's checks passed
        progress = EpochProgress(config.epochs)
        resume = args.resume is not None
        summary = run_training(config, out, args.overwrite, progress, resume, deadline, announce, train_argv)
    except TrainingFailedError as error:
        print(f"pcasgd: run failed{where}: {error}; metrics so far are in the run directory", file=sys.stderr)
        _end_the_job(args, 1)
        return 1
    except RunFilesError as error:  # raised on the rank that writes, mid-run: the others must stop too
        print(f"pcasgd: error{where}: {error}; the records written before are kept", file=sys.stderr)
        _end_the_job(args, 2)
        return 2
    except PcasgdError as error:
        print(f"pcasgd: error{where}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or an unforeseen failure: end the job now, not at the deadlines
        if args.backend != "mpi":
            raise
        from pcasgd.runtime.faults import is_process_failure

        # a process failure that reaches here came before the recovery took over: during start-up
        if args.fault_tolerant and is_process_failure(error):
            print(
                f"pcasgd: run failed{where}: a rank died during start-up, before --fault-tolerant could survive "
                f"it (it does once every rank has joined the training); start the job again ({error})",
                file=sys.stderr,
            )
            return 1
        traceback.print_exc()
        # --fault-tolerant: this rank ends (main leaves without MPI_Finalize, which would hang
        # there) and the others survive it; otherwise the whole job ends now
        ends = "this rank ends" if args.fault_tolerant else "ending the job"
        print(f"pcasgd: error{where}: {type(error).__name__}: {error} (above: where); {ends}", file=sys.stderr)
        if args.fault_tolerant:
            return 1
        _end_the_job(args, 1)
        return 1
    except KeyboardInterrupt:
        print(f"pcasgd: interrupted{where}; metrics so far are in the run directory", file=sys.stderr)
        return 130
    finally:
        if deadline is not None:
            deadline.close()
    if summary is None:
        return 0
    final = summary["final"]
    print(
        f"final test accuracy {final['test_accuracy']:.4f} (agents {final['agent_accuracy_min']:.4f}.."
        f"{final['agent_accuracy_max']:.4f}), consensus distance {final['consensus_distance_mean']:.4g}, "
        f"staleness mean {summary['staleness']['mean']:.2f} max {summary['staleness']['max']}, "
        f"{_ages_text(summary['ages'])}{final['wall_seconds']:.1f}s; run files in {out}"
    )
    return 0


def _ages_text(ages: dict) -> str:
    """The median ages of each neighbour's snapshots, for the final line (empty without ages)."""
    medians = [f"{source}<{entry['median_below']:g}" for source, entry in ages["by_source"].items()]
    return f"median age by rank {' '.join(medians)}, " if medians else ""


def _end_the_job(args: argparse.Namespace, status: int) -> None:
    """Under mpirun, end every rank now rather than at the other ranks' deadlines."""
    if args.backend == "mpi" and args.comm == "mpi" and _world(args).Get_size() > 1:
        sys.stderr.flush()
        _world(args).Abort(status)


def _train_out(args: argparse.Namespace, config: RunConfig) -> Path:
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ConfigError(f"--resume continues the run in {args.resume}; --out {args.out} names another")
        return args.resume
    return args.out if args.out is not None else Path("runs") / f"{config.algorithm.mode}-seed{config.seed}"


def _plot(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else args.runs[0]
    for path in plot_runs(args.runs, out):
        print(path)
    return 0


def effective_config(train_argv: Sequence[str]) -> dict:
    """The configuration record (``summary.json``'s ``config``) of ``pcasgd train`` with these
    flags, without starting anything (under MPI ``--agents`` must be among them)."""
    return run_config_from(command_parsers()[1]["train"].parse_args(list(train_argv))).summary_record()


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Each cell runs ``pcasgd train`` with this command's other flags; bad settings fail before any run."""
    variants = [Variant(mode, ("--mode", mode)) for mode in args.modes] + [parse_variant(v) for v in args.variant]
    base = strip_options(
        argv[argv.index("compare") + 1 :], ("--modes", "--variant", "--delays", "--seeds", "--out", "--config")
    )
    train_parser = command_parsers()[1]["train"]
    for variant in variants:
        cell_flags = [*base, *variant.flags, "--delay", args.delays[0]]
        try:
            _refuse_ignored_options(run_config_from(train_parser.parse_args(cell_flags)), cell_flags)
        except SystemExit:
            raise ConfigError(f"variant {variant.name!r}: pcasgd train refuses these flags (see above)") from None
    for delay in args.delays:
        parse_delays(delay, 0)
    out = args.out if args.out is not None else Path("runs") / "compare"
    agents = args.agents if args.agents is not None else RunConfig().agents
    if args.agents is None:  # every cell names its agents: its configuration is then known before it runs
        base += ["--agents", str(agents)]
    table = compare(variants, args.delays, args.seeds, base, out, args.backend, agents, main, effective_config)
    print(table, end="")
    print(f"table, figure and runs in {out}")
    return 0


# The run directory, once known: a rank stopped by its launcher also notes it there, because
# mpirun that is itself signalled stops relaying the ranks' output before they can say why.
STOP_LOG = "stopped.log"
_run_directory: list[Path] = []


def _stopped_by_launcher(rank: int, signum: int, fault_tolerant: bool) -> None:
    """Say why this rank ends and end it. Under ``--fault-tolerant`` it ends as a killed rank
    does (SIGKILL): Open MPI's ULFM runtime survives a rank's death by a signal, but one that
    exits with a status makes mpirun exit at once and leaves the survivors running as orphans
    (measured: launch/mpirun.sh exited 143 while rank 0 had yet to write summary.json)."""
    if fault_tolerant:
        line = f"pcasgd: rank {rank} got signal {signum}: under --fault-tolerant it ends as a dead rank does"
    else:
        line = (
            f"pcasgd: error (rank {rank}): stopped by the launcher (signal {signum}): the job was cancelled, "
            "or another rank failed (see its message)"
        )
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    for out in _run_directory:
        with contextlib.suppress(OSError), (out / STOP_LOG).open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    if fault_tolerant:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
