"""One training run: data, model, engine, per-epoch metrics, and the files a run leaves.

A run directory holds ``metrics.jsonl`` and ``metrics.csv`` (one record per epoch, appended as
it goes; ``tensorboard/`` with ``--tensorboard``), ``summary.json`` (effective configuration,
final metrics, versions) and ``model.pt`` (the evaluated model's ``state_dict``). The last two
are written atomically at the end.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from pcasgd import __version__, delays, topology
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app import checkpoint as checkpoints
from pcasgd.app.data import (
    DATASETS,
    Dataset,
    label_histogram,
    load,
    parse_partition,
    partition,
    training_labels,
)
from pcasgd.app.files import write_atomically
from pcasgd.app.metrics import MetricsWriter
from pcasgd.app.models import build_model
from pcasgd.app.run_files import RunDirectory
from pcasgd.engine import EngineRun, EpochView
from pcasgd.engines import BACKENDS, EngineInputs, ranks_needed, run_engine
from pcasgd.errors import ConfigError, PcasgdError
from pcasgd.flat import flat_gradient, flatten_parameters, load_flat_parameters, segment_offsets
from pcasgd.runtime.device import DEVICES, HOST_STAGING, select_device, stage_through_host
from pcasgd.transport.staging import HostStaging

if TYPE_CHECKING:
    from pcasgd.transport.deadline import Deadline

EVAL_BATCH = 1000


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run besides the algorithm's own options."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    backend: str = "sim"
    agents: int = 4
    topology: str = "ring"
    weights: str = "auto"
    delay: str = "none"
    dataset: str = "digits"
    data_dir: str | None = None  # where the dataset's files are (default: the dataset's usual places)
    download: bool = False  # fetch mnist / fashion-mnist / cifar10 with torchvision into data_dir
    partition: str = "iid"  # or dirichlet:ALPHA (non-IID)
    model: str = "mlp"
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    deterministic: bool = False  # mpi: lock-step iterations, reproduces the simulator
    deadline: float = 60.0  # mpi: seconds any wait may take before the run fails
    # mpi: seconds the start may take (MPI start-up, rank 0 finding, decoding or downloading the data)
    startup_deadline: float = 600.0
    progress_thread: bool = False  # mpi: a helper thread keeps MPI transfers moving during the compute
    shared_windows: bool = False  # mpi, decentralized: MPI.Win.Allocate_shared (all ranks on one node)
    device: str = "cpu"  # cpu | cuda (GPU local_rank % count) | auto
    host_staging: str = "auto"  # mpi: copy GPU buffers through pinned host memory (auto: unless CUDA-aware)
    tensorboard: bool = False  # also write the per-epoch scalars as TensorBoard events
    checkpoint_every: int = 1  # epochs between checkpoints (0: none); every rank writes its own
    eval_every: int = 0  # also record every K iterations inside an epoch (0: once per epoch)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")
        if self.agents < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("agents, epochs and batch size must be >= 1")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: once per epoch), got {self.eval_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")
        for name in ("deadline", "startup_deadline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.backend == "sim" and self.algorithm.comm == "horovod":
            raise ConfigError("--comm horovod is for --backend mpi")
        if self.backend == "sim" and (self.deterministic or self.progress_thread or self.shared_windows):
            raise ConfigError("--deterministic, --progress-thread and --shared-windows are for --backend mpi")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        parse_partition(self.partition)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; available: {', '.join(DEVICES)}")
        if self.host_staging not in HOST_STAGING:
            raise ConfigError(f"unknown host staging {self.host_staging!r}; available: {', '.join(HOST_STAGING)}")
        if self.algorithm.comm == "horovod" and self.progress_thread:
            raise ConfigError("--progress-thread is for MPI transfers; Horovod progresses in its own thread")


class BatchOracle:
    """Gradients of each agent's next mini-batch from its own shard, in a seeded order.

    Each agent walks a fresh permutation of its shard per pass; a pass's last batch may be
    smaller. Augmentation (CIFAR-10) draws from the agent's own generator, so a run is
    reproducible per seed on any backend. One model object is reused: the agent's flat
    parameters are loaded into it. ``weight_decay`` adds ``weight_decay * x`` to the gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        shards: list[np.ndarray],
        batch_size: int,
        seed: int,
        weight_decay: float = 0.0,
    ) -> None:
        self.model = model
        self.data = data
        self.shards = shards
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self._rngs = [np.random.default_rng([seed, agent]) for agent in range(len(shards))]
        self._generators = [torch.Generator().manual_seed(seed * 100_003 + agent) for agent in range(len(shards))]
        self._orders: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in shards]
        self._positions = [0] * len(shards)
        self.samples = 0
        self.loss_fn = nn.CrossEntropyLoss()

    def state_dict(self) -> dict[str, Any]:
        """Where each agent is in its data and its random streams (for checkpoints)."""
        return {
            "rngs": [rng.bit_generator.state for rng in self._rngs],
            "generators": [generator.get_state() for generator in self._generators],
            "orders": self._orders,
            "positions": self._positions,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rng, saved in zip(self._rngs, state["rngs"], strict=True):
            rng.bit_generator.state = saved
        for generator, saved in zip(self._generators, state["generators"], strict=True):
            generator.set_state(saved)
        self._orders, self._positions, self.samples = state["orders"], state["positions"], state["samples"]

    def _next_rows(self, agent: int) -> np.ndarray:
        if self._positions[agent] >= len(self._orders[agent]):
            self._orders[agent] = self.shards[agent][self._rngs[agent].permutation(len(self.shards[agent]))]
            self._positions[agent] = 0
        start = self._positions[agent]
        self._positions[agent] = start + self.batch_size
        return self._orders[agent][start : start + self.batch_size]

    def __call__(self, agent: int, params: Tensor) -> tuple[Tensor, float]:
        x, y = self.data.train_batch(self._next_rows(agent))
        inputs = self.data.inputs(x, self._generators[agent])
        load_flat_parameters(self.model, params)
        self.model.train()
        self.model.zero_grad(set_to_none=True)  # fresh gradients: accumulating into old ones was ~10 % slower
        loss = self.loss_fn(self.model(inputs), y)
        loss.backward()
        self.samples += len(y)
        grad = flat_gradient(self.model).detach()  # torch.cat: a new tensor already
        if self.weight_decay:
            grad = grad + self.weight_decay * params
        return grad, loss.item()


@torch.no_grad()
def evaluate(model: nn.Module, params: Tensor, data: Dataset) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``params`` on the test set, in batches."""
    load_flat_parameters(model, params)
    model.eval()
    correct, loss = 0.0, 0.0
    for start in range(0, len(data.test_y), EVAL_BATCH):
        x, y = data.test_x[start : start + EVAL_BATCH], data.test_y[start : start + EVAL_BATCH]
        logits = model(data.inputs(x))
        correct += float((logits.argmax(dim=1) == y).sum())
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data.test_y), loss / len(data.test_y)


def consensus_distance(agent_params: list[Tensor]) -> tuple[float, float]:
    """Mean and max over agents of ``||x_i - x_bar||``."""
    stacked = torch.stack(agent_params)
    distances = torch.linalg.vector_norm(stacked - stacked.mean(dim=0), dim=1)
    return float(distances.mean()), float(distances.max())


def versions() -> dict[str, str]:
    found = {
        "pcasgd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for module in ("sklearn", "mpi4py", "torchvision", "horovod"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found


def _open_run_directory_everywhere(
    comm, out: Path, overwrite: bool, resumed: list[dict[str, Any]] | None
) -> RunDirectory | None:
    """Rank 0 locks and prepares ``out`` (``resumed``: the metrics records a resumed run keeps) and
    returns it; every rank raises the same error if that failed."""
    problem, directory = None, None
    if comm is None or comm.Get_rank() == 0:
        directory = RunDirectory(out)
        try:
            directory.open(overwrite, resumed)
        except (PcasgdError, OSError) as error:
            problem, directory = str(error), None
    if comm is not None:
        problem = comm.bcast(problem, root=0)
    if problem is not None:
        if directory is not None:
            directory.close(succeeded=False)
        raise ConfigError(problem)
    return directory


# Each agent's accuracy is measured on a fixed random subset of the test set: evaluating every
# agent on all of it each epoch would cost more than the epoch itself for a ResNet on CIFAR-10.
AGENT_EVAL_SAMPLES = 2000


def _training_labels_everywhere(comm, deadline, config: RunConfig, data_dir: Path | None) -> np.ndarray:
    """The training labels; under MPI rank 0 finds, downloads and decodes (caches) first, alone,
    and a problem there is raised on every rank."""
    if comm is None:
        return training_labels(config.dataset, data_dir, config.download)
    problem, labels = None, None
    if comm.Get_rank() == 0:
        try:
            labels = training_labels(config.dataset, data_dir, config.download)
        except ConfigError as error:
            problem = str(error)
    what = "waiting for rank 0 to find and decode the dataset"
    deadline.wait(comm.Ibarrier(), what, config.startup_deadline)  # polled: the waiting ranks yield the CPU
    with deadline.guard(what):
        problem = comm.bcast(problem, root=0)
    if problem is not None:
        raise ConfigError(problem)
    return labels if labels is not None else training_labels(config.dataset, data_dir)


def _warn_of_small_shards(shards: list[np.ndarray], batch_size: int, speak: bool) -> None:
    """A shard smaller than a batch makes every one of its batches short (a Dirichlet partition with
    a large alpha spread over many agents, or too many agents): say so once."""
    small = [agent for agent, shard in enumerate(shards) if len(shard) < batch_size]
    if small and speak:
        sizes = ", ".join(f"agent {agent}: {len(shards[agent])}" for agent in small[:8])
        print(
            f"pcasgd: warning: {len(small)} shard(s) hold fewer samples than a batch of {batch_size} ({sizes}"
            f"{', ...' if len(small) > 8 else ''}); an epoch is as many iterations as the smallest shard has batches",
            file=sys.stderr,
        )


def _own_rows(rank: int, family: str, shards: list[np.ndarray]) -> np.ndarray:
    """The training rows this rank trains on: its shard (workers: rank - 1; the server: none)."""
    if family == "server":
        return shards[rank - 1] if rank > 0 else np.empty(0, dtype=np.int64)
    return shards[rank]


def _world(config: RunConfig):
    """The run's process group for ``--backend mpi`` (imported only then), else None."""
    if config.backend != "mpi":
        return None
    from pcasgd.runtime.world import open_world

    return open_world(config.algorithm.comm)


def run_training(
    config: RunConfig,
    out: Path,
    overwrite: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    resume: bool = False,
    deadline: Deadline | None = None,
) -> dict[str, Any] | None:
    """Train as ``config`` says, write the run files into ``out``; return the summary (rank 0; others None).

    ``resume``: continue the run in ``out`` from its newest checkpoint (under MPI: the newest one
    every rank holds, except in asynchronous decentralized runs, where each rank takes its own).
    ``deadline``: under MPI, the watchdog the caller started before MPI (see
    :func:`start_mpi_under_deadline`); one is started here if not given.
    """
    if config.backend != "mpi":
        return _run(config, out, overwrite, on_epoch, None, None, resume)
    own = deadline is None
    if own:
        deadline = start_mpi_under_deadline(config.algorithm.comm, config.deadline, config.startup_deadline)[1]
    try:
        return _run(config, out, overwrite, on_epoch, _world(config), deadline, resume)
    finally:
        if own:
            deadline.close()


def start_mpi_under_deadline(comm_kind: str, seconds: float, startup_seconds: float) -> tuple[Any, Deadline]:
    """Start the watchdog, then MPI (or Horovod) under ``startup_seconds``: a rank that never
    starts (stopped, or dead before MPI) makes the others wait in MPI's start-up, which no
    Python code can interrupt. Returns the process group and the watchdog (``seconds`` for
    every later wait); the caller closes the watchdog."""
    from pcasgd.runtime.launch import launcher_rank
    from pcasgd.runtime.world import open_world
    from pcasgd.transport.deadline import Deadline

    deadline = Deadline(launcher_rank(), seconds)
    try:
        with deadline.guard("starting MPI (every rank of the job must start)", startup_seconds):
            comm = open_world(comm_kind)
    except BaseException:
        deadline.close()
        raise
    return comm, deadline


def _config_record(config: RunConfig) -> dict[str, Any]:
    """The effective configuration as plain JSON values (what checkpoints compare)."""
    return json.loads(json.dumps(asdict(config), default=str))


def _readable_checkpoints(out: Path, rank: int) -> tuple[dict[int, dict[str, Any]], str | None]:
    """This rank's checkpoints that load whole, by epoch; one that does not is skipped with a
    warning (a crash or a full disk while it was written), so an older one is used instead.
    Also the newest one's problem if none loads (raised after the ranks compared notes)."""
    readable, problems = {}, []
    for epoch in reversed(checkpoints.available_epochs(out, rank)):
        try:
            readable[epoch] = checkpoints.load(out, rank, epoch)
        except ConfigError as error:
            problems.append(str(error))
    if problems and readable:
        newest = max(readable)
        print(f"pcasgd: warning: {problems[0]}; resuming rank {rank} from epoch {newest} instead", file=sys.stderr)
    return readable, (problems[0] if problems and not readable else None)


def _resume_length_problem(out: Path, checkpoint_epoch: int, epochs: int) -> str | None:
    """Why resuming to ``epochs`` would cut a run short (its checkpoint, or its finished summary,
    is further on), or None."""
    if checkpoint_epoch > epochs:
        return (
            f"the checkpoint in {out} has trained {checkpoint_epoch} epochs; --epochs {epochs} is fewer "
            f"(resuming continues a run: pass --epochs {checkpoint_epoch} or more)"
        )
    try:
        finished = json.loads((out / "summary.json").read_text())["config"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not finished (or no summary this rank can read)
    if epochs <= finished:
        return (
            f"the run in {out} has finished its {finished} epochs; resuming it needs more: pass --epochs "
            f"{finished + 1} or more (or --overwrite without --resume to train it again)"
        )
    return None


def _resume_payload(comm, deadline, config: RunConfig, out: Path) -> dict[str, Any] | None:
    """This rank's checkpoint to resume from; a problem on any rank is raised on every rank.

    Asynchronous decentralized ranks each take their own newest checkpoint; a rank that wrote
    none (a straggler stopped before its first epoch ended) starts again from the beginning.
    """
    rank = 0 if comm is None else comm.Get_rank()
    readable, unreadable = _readable_checkpoints(out, rank)
    epochs = sorted(readable)
    independent = comm is not None and not config.deterministic and config.algorithm.family == "decentralized"
    fresh = False
    if comm is not None:
        with deadline.guard("agreeing on the checkpoint to resume from (collective)"):
            held = comm.allgather(epochs)
        if not independent:
            epochs = sorted(set.intersection(*(set(e) for e in held)))
        elif not epochs and any(held):
            print(
                f"pcasgd: warning: rank {rank} has no checkpoint in {out}: it starts again from the beginning",
                file=sys.stderr,
                flush=True,
            )
            fresh = True
    problem, payload = unreadable, None
    if problem is None and not epochs and not fresh:
        problem = (
            f"nothing to resume in {out}: no checkpoints/rank-{rank}/epoch-*.pt common to every rank "
            "(the run wrote none: --checkpoint-every 0, or it stopped before its first checkpoint)"
        )
    elif problem is None and epochs:
        payload = readable[epochs[-1]]
        try:
            checkpoints.check_same_run(payload, _config_record(config), out)
        except ConfigError as error:
            problem = str(error)
        problem = problem or _resume_length_problem(out, payload["epoch"], config.epochs)
    if comm is not None:
        with deadline.guard("agreeing that every rank can resume (collective)"):
            problems = [p for p in comm.allgather(problem) if p is not None]
        problem = problems[0] if problems else None
    if problem is not None:
        raise ConfigError(problem)
    return payload


def _run(config: RunConfig, out: Path, overwrite: bool, on_epoch, comm, deadline, resume) -> dict[str, Any] | None:
    """The body of :func:`run_training`; ``comm`` and ``deadline`` are None in the simulator."""
    algorithm = config.algorithm
    delay_model = delays.parse(config.delay, config.seed)
    device = select_device(config.device)  # before any output is prepared: a missing GPU changes nothing
    ranks = ranks_needed(algorithm.family, config.agents)
    delay_model.check_fits(ranks)
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, check_world_size

        check_world_size(comm, ranks)
        with deadline.guard("agreeing on the run configuration with the other ranks (collective)"):
            check_same_everywhere(
                comm, "the run configuration", json.dumps(asdict(config), sort_keys=True, default=str)
            )

    torch.manual_seed(config.seed)
    data_dir = Path(config.data_dir) if config.data_dir is not None else None
    labels = _training_labels_everywhere(comm, deadline, config, data_dir)
    shards = partition(labels, config.agents, config.partition, config.seed)
    _warn_of_small_shards(shards, config.batch_size, comm is None or comm.Get_rank() == 0)
    schedule, spectral_gap = None, None
    if algorithm.family == "decentralized":  # after the cheap checks: a graph of many agents takes a while
        schedule = topology.build(config.topology, config.agents, config.weights, config.seed)
        spectral_gap = schedule.spectral_gap()
        if isinstance(schedule, topology.Topology):
            delay_model.check_fits(ranks, schedule.adjacency)
    rows = None if comm is None else _own_rows(comm.Get_rank(), algorithm.family, shards)
    data = load(config.dataset, data_dir, train_rows=rows).to(device)
    model = build_model(config.model, data.input_shape, data.classes).to(device)
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, check_window_memory, model_signature

        if algorithm.family == "decentralized":
            check_window_memory(flatten_parameters(model).numel(), 4, delay_model.max_lag)

        with deadline.guard("comparing the model with the other ranks (collective)"):
            check_same_everywhere(comm, "the model's parameter shapes and dtypes", model_signature(model))
    payload = _resume_payload(comm, deadline, config, out) if resume else None
    resumed_records = payload["records"] if payload is not None else ([] if resume else None)
    # Only now, with the data found, the model built and the checkpoint read, is an earlier run's output touched.
    if comm is not None:
        with deadline.guard("preparing the run directory (collective)"):
            directory = _open_run_directory_everywhere(comm, out, overwrite, resumed_records)
    else:
        directory = _open_run_directory_everywhere(comm, out, overwrite, resumed_records)
    succeeded = False
    try:
        oracle = BatchOracle(model, data, shards, config.batch_size, config.seed, algorithm.weight_decay)
        iterations_per_epoch = math.ceil(min(len(shard) for shard in shards) / config.batch_size)
        writer = MetricsWriter(out, config.tensorboard) if comm is None or comm.Get_rank() == 0 else None
        agent_test = data.test_subset(AGENT_EVAL_SAMPLES)
        started = time.perf_counter()
        last = {"time": started, "samples": 0}
        records: list[dict[str, Any]] = []
        rank = 0 if comm is None else comm.Get_rank()
        if payload is not None:
            oracle.load_state_dict(payload["oracle"])
            for name, buffer in payload["buffers"].items():
                model.get_buffer(name).copy_(buffer)
            torch.set_rng_state(payload["torch_rng"])
            records = list(payload["records"])
            started -= payload["wall_seconds"]
            last.update(time=time.perf_counter(), samples=payload["samples"])

        def save_checkpoint(epoch: int, engine_state: dict[str, Any]) -> None:
            if epoch % config.checkpoint_every:
                return
            state = {
                "config": _config_record(config),
                "engine": engine_state,
                "oracle": oracle.state_dict(),
                "buffers": {name: buffer.detach().cpu().clone() for name, buffer in model.named_buffers()},
                "torch_rng": torch.get_rng_state(),
                "records": list(records),
                "wall_seconds": time.perf_counter() - started,
                "samples": last["samples"],
            }
            checkpoints.save(out, rank, epoch, state)

        def record_epoch(view: EpochView) -> None:
            now = time.perf_counter()
            accuracy, loss = evaluate(model, view.reference_params, data)
            agent_accuracy = [evaluate(model, p, agent_test)[0] for p in view.agent_params]
            distance_mean, distance_max = consensus_distance(view.agent_params)
            samples = view.samples - last["samples"]
            record = {
                "epoch": view.epoch,
                "test_accuracy": accuracy,
                "test_loss": loss,
                "agent_accuracy_min": min(agent_accuracy),
                "agent_accuracy_max": max(agent_accuracy),
                "agent_accuracy_std": float(np.std(agent_accuracy)),
                "train_loss": view.stats.mean_loss,
                "wall_seconds": now - started,
                "eta_seconds": (now - started) / view.epoch * (config.epochs - view.epoch),
                "epoch_seconds": now - last["time"],
                "samples_per_second": samples / max(now - last["time"], 1e-9),
                "consensus_distance_mean": distance_mean,
                "consensus_distance_max": distance_max,
                "staleness_mean": view.stats.staleness_mean,
                "staleness_max": view.stats.staleness_max,
                "staleness_histogram": {str(k): v for k, v in sorted(view.stats.staleness_histogram.items())},
                "predict_fraction": view.stats.predict_fraction,
                "lr": algorithm.lr_at(float(view.epoch)),
                "iterations": view.iterations,
                "sim_time": view.sim_time,
            }
            last.update(time=now, samples=view.samples)
            records.append(record)
            writer.write(record)
            if on_epoch is not None:
                on_epoch(record)

        run = EngineRun(
            algorithm,
            delay_model,
            oracle,
            flatten_parameters(model),
            iterations_per_epoch,
            config.epochs,
            record_epoch,
            checkpoint=save_checkpoint if config.checkpoint_every else None,
            resume=payload["engine"] if payload is not None else None,
            record_every=config.eval_every,
        )
        inputs = EngineInputs(run, config.agents, schedule, segment_offsets(model), comm, deadline)
        if comm is not None:
            from pcasgd.runtime.exchange import MpiOptions

            staging = HostStaging(device, stage_through_host(device, config.host_staging))
            inputs.mpi = MpiOptions(config.deterministic, config.shared_windows, config.progress_thread, staging)
        result = run_engine(config.backend, inputs)
        if result is None:
            return None
        load_flat_parameters(model, result.reference_params)
        write_atomically(out / "model.pt", lambda path: torch.save(model.state_dict(), path))
        staleness_total = sum(result.staleness.values())
        summary = {
            "config": {
                **asdict(config),
                "algorithm": algorithm.to_dict(),
                "effective_lambda": algorithm.effective_lambda,
                "effective_ms_decay": algorithm.effective_ms_decay,
                "effective_momentum": algorithm.effective_momentum,
            },
            "topology": {"spec": config.topology, "spectral_gap": spectral_gap} if schedule is not None else None,
            "partition": {
                "spec": config.partition,
                "samples_per_agent": [len(shard) for shard in shards],
                "classes_per_agent": label_histogram(labels, shards, data.classes),
            },
            "iterations_per_epoch": iterations_per_epoch,
            "iterations": result.iterations,
            "staleness": {
                "mean": sum(k * v for k, v in result.staleness.items()) / staleness_total if staleness_total else 0.0,
                "max": max(result.staleness, default=0),
                "histogram": {str(k): v for k, v in sorted(result.staleness.items())},
            },
            "decisions": dict(result.decisions),
            "final": records[-1],
            "versions": versions(),
        }
        writer.close()
        write_atomically(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
        succeeded = True
        return summary
    finally:
        if directory is not None:
            directory.close(succeeded)
