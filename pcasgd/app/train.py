"""One training run: data, model, engine, per-epoch metrics, and the files a run leaves.

A run directory holds ``metrics.jsonl`` (one record per epoch, appended as it goes),
``summary.json`` (effective configuration, final metrics, versions) and ``model.pt`` (the
evaluated model's ``state_dict``). The last two are written atomically at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pcasgd import __version__, delays, topology
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app.data import Dataset, load, partition_iid
from pcasgd.app.models import build_model, flat_gradient, flatten_parameters, load_flat_parameters, segment_offsets
from pcasgd.errors import ConfigError
from pcasgd.sim import EpochView, simulate

BACKENDS = ("sim", "mpi")
RUN_FILES = ("metrics.jsonl", "summary.json", "model.pt")


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
    model: str = "mlp"
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    deterministic: bool = False  # mpi: lock-step iterations, reproduces the simulator
    deadline: float = 60.0  # mpi: seconds any wait may take before the run fails
    progress_thread: bool = False  # mpi, odsgd: a helper thread advances the allreduce in flight
    shared_windows: bool = False  # mpi, decentralized: MPI.Win.Allocate_shared (all ranks on one node)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")
        if self.agents < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("agents, epochs and batch size must be >= 1")
        if self.deadline <= 0:
            raise ConfigError(f"deadline must be > 0 seconds, got {self.deadline}")
        if self.backend == "sim" and self.algorithm.comm == "horovod":
            raise ConfigError("--comm horovod is for --backend mpi")
        if self.backend == "sim" and (self.deterministic or self.progress_thread or self.shared_windows):
            raise ConfigError("--deterministic, --progress-thread and --shared-windows are for --backend mpi")


class BatchOracle:
    """Gradients of each agent's next mini-batch from its own shard, in a seeded order.

    Each agent walks a fresh permutation of its shard per pass; a pass's last batch may be
    smaller. One model object is reused: the agent's flat parameters are loaded into it.
    """

    def __init__(self, model: nn.Module, data: Dataset, shards: list[np.ndarray], batch_size: int, seed: int) -> None:
        self.model = model
        self.data = data
        self.shards = shards
        self.batch_size = batch_size
        self._rngs = [np.random.default_rng([seed, agent]) for agent in range(len(shards))]
        self._orders: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in shards]
        self._positions = [0] * len(shards)
        self.samples = 0
        self.loss_fn = nn.CrossEntropyLoss()

    def _next_indices(self, agent: int) -> np.ndarray:
        if self._positions[agent] >= len(self._orders[agent]):
            self._orders[agent] = self.shards[agent][self._rngs[agent].permutation(len(self.shards[agent]))]
            self._positions[agent] = 0
        start = self._positions[agent]
        self._positions[agent] = start + self.batch_size
        return self._orders[agent][start : start + self.batch_size]

    def __call__(self, agent: int, params: Tensor) -> tuple[Tensor, float]:
        indices = torch.from_numpy(self._next_indices(agent))
        load_flat_parameters(self.model, params)
        self.model.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.model(self.data.train_x[indices]), self.data.train_y[indices])
        loss.backward()
        self.samples += len(indices)
        return flat_gradient(self.model).detach(), loss.item()  # torch.cat: a new tensor already


@torch.no_grad()
def evaluate(model: nn.Module, params: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``params`` on ``(x, y)``."""
    load_flat_parameters(model, params)
    logits = model(x)
    return float((logits.argmax(dim=1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


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
    for module in ("sklearn", "mpi4py", "torchvision"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _prepare_output_everywhere(comm, out: Path, overwrite: bool) -> None:
    """Rank 0 prepares ``out``; every rank raises the same error if that failed."""
    problem = None
    if comm is None or comm.Get_rank() == 0:
        try:
            prepare_output(out, overwrite)
        except (ConfigError, OSError) as error:
            problem = str(error)
    if comm is not None:
        problem = comm.bcast(problem, root=0)
    if problem is not None:
        raise ConfigError(problem)


def prepare_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse to touch an earlier run's files unless ``overwrite``."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(existing)}); pass --overwrite or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out / name).unlink()


def _world(config: RunConfig):
    """MPI.COMM_WORLD for ``--backend mpi`` (imported only then), else None."""
    if config.backend != "mpi":
        return None
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ConfigError(
            f"--backend mpi needs mpi4py and an MPI library ({error}); pip install 'pcasgd[mpi]'"
        ) from None
    return MPI.COMM_WORLD


def run_training(
    config: RunConfig, out: Path, overwrite: bool = False, on_epoch: Callable[[dict], None] | None = None
) -> dict[str, Any] | None:
    """Train as ``config`` says, write the run files into ``out``; return the summary (rank 0; others None)."""
    comm = _world(config)
    if comm is None:
        return _run(config, out, overwrite, on_epoch, None, None)
    from pcasgd.transport.deadline import Deadline

    deadline = Deadline(comm.Get_rank(), config.deadline)
    try:
        return _run(config, out, overwrite, on_epoch, comm, deadline)
    finally:
        deadline.close()


def _run(config: RunConfig, out: Path, overwrite: bool, on_epoch, comm, deadline) -> dict[str, Any] | None:
    """The body of :func:`run_training`; ``comm`` and ``deadline`` are None in the simulator."""
    algorithm = config.algorithm
    schedule = None
    spectral_gap = None
    if algorithm.family == "decentralized":
        schedule = topology.build(config.topology, config.agents, config.weights, config.seed)
        spectral_gap = schedule.spectral_gap()
    delay_model = delays.parse(config.delay, config.seed)
    ranks = config.agents + 1 if algorithm.family == "server" else config.agents
    delay_model.check_fits(ranks, schedule.adjacency if isinstance(schedule, topology.Topology) else None)
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, check_world_size

        check_world_size(comm, ranks)
        with deadline.guard("agreeing on the run configuration with the other ranks (collective)"):
            check_same_everywhere(
                comm, "the run configuration", json.dumps(asdict(config), sort_keys=True, default=str)
            )
            _prepare_output_everywhere(comm, out, overwrite)
    else:
        _prepare_output_everywhere(comm, out, overwrite)

    torch.manual_seed(config.seed)
    data = load(config.dataset)
    shards = partition_iid(len(data.train_y), config.agents, config.seed)
    model = build_model(config.model, data.input_shape, data.classes)
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, model_signature

        with deadline.guard("comparing the model with the other ranks (collective)"):
            check_same_everywhere(comm, "the model's parameter shapes and dtypes", model_signature(model))
    oracle = BatchOracle(model, data, shards, config.batch_size, config.seed)
    iterations_per_epoch = math.ceil(min(len(shard) for shard in shards) / config.batch_size)
    metrics_path = out / "metrics.jsonl"
    started = time.perf_counter()
    last = {"time": started, "samples": 0}
    records: list[dict[str, Any]] = []

    def record_epoch(view: EpochView) -> None:
        now = time.perf_counter()
        accuracy, loss = evaluate(model, view.reference_params, data.test_x, data.test_y)
        agent_accuracy = [evaluate(model, p, data.test_x, data.test_y)[0] for p in view.agent_params]
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
            "epoch_seconds": now - last["time"],
            "samples_per_second": samples / max(now - last["time"], 1e-9),
            "consensus_distance_mean": distance_mean,
            "consensus_distance_max": distance_max,
            "staleness_mean": view.stats.staleness_mean,
            "staleness_max": view.stats.staleness_max,
            "predict_fraction": view.stats.predict_fraction,
            "iterations": view.iterations,
            "sim_time": view.sim_time,
        }
        last.update(time=now, samples=view.samples)
        records.append(record)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if on_epoch is not None:
            on_epoch(record)

    if comm is None:
        result = simulate(
            algorithm,
            config.agents,
            delay_model,
            oracle,
            flatten_parameters(model),
            iterations_per_epoch,
            config.epochs,
            hook=record_epoch,
            topology=schedule,
            segments=segment_offsets(model),
        )
    else:
        from pcasgd.runtime.collective import run_collective
        from pcasgd.runtime.decentralized import DecentralizedRank, MpiOptions
        from pcasgd.runtime.parameter_server import run_parameter_server
        from pcasgd.sim import SimRun

        run = SimRun(
            algorithm, delay_model, oracle, flatten_parameters(model), iterations_per_epoch, config.epochs, record_epoch
        )
        if algorithm.family == "collective":
            result = run_collective(comm, run, deadline, progress_thread=config.progress_thread)
        elif algorithm.family == "server":
            result = run_parameter_server(comm, run, deadline, config.deterministic)
        else:
            options = MpiOptions(deterministic=config.deterministic, shared_windows=config.shared_windows)
            result = DecentralizedRank(comm, run, schedule, segment_offsets(model), options, deadline).train()
        if result is None:
            return None
    load_flat_parameters(model, result.reference_params)
    _write_atomically(out / "model.pt", lambda path: torch.save(model.state_dict(), path))
    staleness_total = sum(result.staleness.values())
    summary = {
        "config": {
            **asdict(config),
            "algorithm": algorithm.to_dict(),
            "effective_lambda": algorithm.effective_lambda,
            "effective_momentum": algorithm.effective_momentum,
        },
        "topology": {"spec": config.topology, "spectral_gap": spectral_gap} if schedule is not None else None,
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
    _write_atomically(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary
