"""One training run: data, model, engine, per-epoch metrics, and the files a run leaves.

A run directory holds ``metrics.jsonl`` and ``metrics.csv`` (one record per epoch, appended as
it goes; ``tensorboard/`` with ``--tensorboard``), ``summary.json`` (effective configuration,
final metrics, versions) and ``model.pt`` (the evaluated model's ``state_dict``). The last two
are written atomically at the end.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from pcasgd import __version__, delays, log, topology
from pcasgd.app import checkpoint as checkpoints
from pcasgd.app.data import (
    Dataset,
    label_histogram,
    load,
    partition,
    training_labels,
)
from pcasgd.app.files import write_atomically
from pcasgd.app.metrics import MetricsWriter, age_summary, prediction_summary
from pcasgd.app.models import build_model
from pcasgd.app.oracle import BatchOracle, consensus_distance, evaluate
from pcasgd.app.resume import resume_payload
from pcasgd.app.run_config import RunConfig
from pcasgd.app.run_files import RunDirectory
from pcasgd.dispatch import EngineInputs, ranks_needed, run_engine
from pcasgd.engine import EngineRun, EpochView
from pcasgd.errors import ConfigError, PcasgdError
from pcasgd.flat import flatten_parameters, load_flat_parameters, segment_offsets
from pcasgd.runtime.device import select_device, stage_through_host
from pcasgd.transport.jobs import JobThread
from pcasgd.transport.staging import HostStaging

LOG = log.get("train")

if TYPE_CHECKING:
    from pcasgd.transport.deadline import Deadline


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
        LOG.warning(
            f"{len(small)} shard(s) hold fewer samples than a batch of {batch_size} ({sizes}"
            f"{', ...' if len(small) > 8 else ''}); an epoch is as many iterations as the smallest shard has batches"
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
    on_start: Callable[[], None] | None = None,
    train_argv: list[str] | None = None,
) -> dict[str, Any] | None:
    """Train as ``config`` says, write the run files into ``out``; return the summary (rank 0; others None).

    ``resume``: continue the run in ``out`` from its newest checkpoint (under MPI: the newest one
    every rank holds, except in asynchronous decentralized runs, where each rank takes its own).
    ``deadline``: under MPI, the watchdog the caller started before MPI (see
    :func:`start_mpi_under_deadline`); one is started here if not given. ``on_start``: called once
    every check has passed and the run directory is ready (a refusal comes before it).
    ``train_argv``: the ``pcasgd train`` flags, which start a replacement under ``config.rejoin``.
    """
    if config.backend != "mpi":
        return _run(config, out, overwrite, on_epoch, None, None, resume, on_start)
    replacement = None
    if config.rejoin:
        from pcasgd.runtime.rejoin import replacement_command

        if train_argv is None:
            raise ConfigError("--rejoin starts replacements with the pcasgd train command: run it from the CLI")
        replacement = replacement_command(train_argv)  # started in this directory: the same run directory
    own = deadline is None
    if own:
        deadline = start_mpi_under_deadline(config.algorithm.comm, config.deadline, config.startup_deadline)[1]
    try:
        return _run(config, out, overwrite, on_epoch, _world(config), deadline, resume, on_start, replacement)
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


@dataclass
class _Prepared:
    """A run, checked and loaded, before it touches its directory."""

    delay_model: delays.DelayModel
    device: torch.device
    labels: np.ndarray
    shards: list[np.ndarray]
    schedule: topology.Schedule | None
    spectral_gap: float | None
    data: Dataset
    model: nn.Module
    per_epoch: int  # iterations per epoch: the smallest shard's batches
    payload: dict[str, Any] | None  # the checkpoint resumed from


def _prepare(config: RunConfig, out: Path, comm, deadline, resume: bool, newcomer: int | None) -> _Prepared:
    """Every check, cheap ones first; the data, the graph, the model and the checkpoint. A
    problem is one error on every rank, before anything in ``out`` is touched. ``newcomer``: the
    agent this process replaces (``--rejoin``): it checks alone, as the others train meanwhile."""
    algorithm = config.algorithm
    delay_model = delays.parse(config.delay, config.seed)
    device = select_device(config.device)  # before any output is prepared: a missing GPU changes nothing
    ranks = ranks_needed(algorithm.family, config.agents)
    delay_model.check_fits(ranks)
    together = comm if newcomer is None else None  # whom the start-up collectives run with
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, check_world_size

        check_world_size(comm, ranks)
        if config.fault_tolerant and algorithm.comm == "horovod":
            from pcasgd.runtime.elastic import check_elastic

            check_elastic(config.deadline)
        elif config.fault_tolerant:
            from pcasgd.runtime.faults import check_enabled

            check_enabled()
    if together is not None:
        with deadline.guard("agreeing on the run configuration with the other ranks (collective)"):
            check_same_everywhere(
                comm, "the run configuration", json.dumps(asdict(config), sort_keys=True, default=str)
            )
    torch.manual_seed(config.seed)
    data_dir = Path(config.data_dir) if config.data_dir is not None else None
    labels = _training_labels_everywhere(together, deadline, config, data_dir)
    shards = partition(labels, config.agents, config.partition, config.seed, config.train_samples)
    _warn_of_small_shards(shards, config.batch_size, together is None or together.Get_rank() == 0)
    schedule, spectral_gap = None, None
    if algorithm.family == "decentralized":  # after the cheap checks: a graph of many agents takes a while
        schedule = topology.build(config.topology, config.agents, config.weights, config.seed)
        spectral_gap = schedule.spectral_gap()
        if isinstance(schedule, topology.Topology):
            delay_model.check_fits(ranks, schedule.adjacency)
    rows = None if comm is None else _own_rows(_identity(comm, newcomer), algorithm.family, shards)
    data = load(config.dataset, data_dir, train_rows=rows)
    if config.test_samples > len(data.test_y):
        raise ConfigError(f"--test-samples {config.test_samples} but the test set has only {len(data.test_y)} samples")
    if config.test_samples:
        data = data.test_subset(config.test_samples)
    data = data.to(device)
    model = build_model(config.model, data.input_shape, data.classes).to(device)
    if comm is not None:
        from pcasgd.runtime.checks import check_same_everywhere, check_window_memory, model_signature

        if algorithm.family == "decentralized":
            from pcasgd.protocol.ring import ring_slots

            slots = ring_slots(algorithm, delay_model, schedule, config.deterministic)
            vectors = len(algorithm.snapshot_vectors)
            check_window_memory(flatten_parameters(model).numel(), 4, delay_model.max_lag, slots, vectors)
        if together is not None:
            with deadline.guard("comparing the model with the other ranks (collective)"):
                check_same_everywhere(comm, "the model's parameter shapes and dtypes", model_signature(model))
    per_epoch = math.ceil(min(len(shard) for shard in shards) / config.batch_size)
    resuming = resume and newcomer is None  # a newcomer is healed from a survivor instead
    payload = resume_payload(comm, deadline, config, out, schedule, per_epoch) if resuming else None
    return _Prepared(delay_model, device, labels, shards, schedule, spectral_gap, data, model, per_epoch, payload)


class _Recording:
    """A run's records and checkpoints as the engine reaches each epoch (and each
    ``--eval-every`` mark): evaluates, writes the metrics (rank 0), saves this rank's state."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        prepared: _Prepared,
        oracle: BatchOracle,
        directory: RunDirectory | None,
        on_epoch,
        rank: int,
        background: bool = False,
    ) -> None:
        self.config, self.out, self.rank = config, out, rank
        self.model, self.data, self.oracle = prepared.model, prepared.data, oracle
        # Asynchronous decentralized runs: rank 0 evaluates on a thread of its own, on a copy of the
        # model, and goes on training meanwhile (its neighbours would otherwise read it as stopped,
        # and it would fall behind: on 4 test hosts its evaluations left rank 0 a quarter of the
        # others' iterations). The records stay in order; a checkpoint waits for them.
        self._background: JobThread | None = None
        self._evaluated = prepared.model
        if background:
            self._record_in_background()
        self._last_record: Future | None = None
        self.agent_test = prepared.data.test_subset(AGENT_EVAL_SAMPLES)
        # rank 0 (which alone records) holds the directory and writes the metrics
        self.directory, self.on_epoch = directory, on_epoch
        self.writer = MetricsWriter(out, config.tensorboard) if directory is not None else None
        self.started = time.perf_counter()
        self.last_time, self.last_samples = self.started, 0
        self.records: list[dict[str, Any]] = []
        self._took_over = False
        payload = prepared.payload
        if payload is not None:
            if payload["oracle"] is not None:  # None: resized, the data sharded anew (app/resize.py)
                oracle.load_state_dict(payload["oracle"])
            for name, buffer in payload["buffers"].items():
                self.model.get_buffer(name).copy_(buffer)
            torch.set_rng_state(payload["torch_rng"])
            self.records = list(payload["records"])
            self.started -= payload["wall_seconds"]
            self.last_time, self.last_samples = time.perf_counter(), payload["samples"]

    def _record_in_background(self) -> None:
        self._background = JobThread("pcasgd-records")
        self._evaluated = copy.deepcopy(self.model)

    def take_over(self) -> tuple[float | None, int]:
        """Record from now on (the recording rank died, ``--fault-tolerant``): hold the run
        directory as it is and go on with its records; return the last epoch recorded (None:
        none yet) and its samples."""
        self.directory = RunDirectory(self.out)
        self.records = self.directory.take_over()
        self.writer = MetricsWriter(self.out, self.config.tensorboard)
        self._record_in_background()
        last = self.records[-1] if self.records else None
        self.last_time, self.last_samples = time.perf_counter(), (last["samples"] if last else 0)
        self._took_over = True
        return (last["epoch"] if last else None), self.last_samples

    def save_checkpoint(self, epoch: int, engine_state: dict[str, Any]) -> None:
        if epoch % self.config.checkpoint_every:
            return
        self.drain()  # the checkpoint holds the records made so far
        state = {
            "config": self.config.record(),
            "engine": engine_state,
            "oracle": self.oracle.state_dict(),
            "buffers": {name: buffer.detach().cpu().clone() for name, buffer in self.model.named_buffers()},
            "torch_rng": torch.get_rng_state(),
            "records": list(self.records),
            "wall_seconds": time.perf_counter() - self.started,
            "samples": self.last_samples,
        }
        checkpoints.save(self.out, self.rank, epoch, state)

    def record_epoch(self, view: EpochView) -> None:
        """Make the record of ``view``: here, or on the recording thread (times are taken now)."""
        now = time.perf_counter()
        if self._background is None:
            self._record(view, now)
            return
        kept = replace(
            view,
            agent_params=[p.detach().clone() for p in view.agent_params],
            reference_params=view.reference_params.detach().clone(),
            iterations=list(view.iterations),
        )
        buffers = [b.detach().clone() for b in self.model.buffers()]  # BatchNorm statistics, as they are now
        self.drain_finished()
        self._last_record = self._background.submit(partial(self._record_later, kept, now, buffers))

    def _record_later(self, view: EpochView, now: float, buffers: list[Tensor]) -> None:
        for evaluated, buffer in zip(self._evaluated.buffers(), buffers, strict=True):
            evaluated.copy_(buffer)
        self._record(view, now)

    def drain_finished(self) -> None:
        """Raise what a finished background record raised (a full disk, say)."""
        if self._last_record is not None and self._last_record.done():
            self._last_record.result()

    def drain(self) -> None:
        """Wait for the records handed to the recording thread (raising what one raised)."""
        if self._last_record is not None:
            self._last_record.result()

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
        if self.writer is not None:
            self.writer.close()
        if self._took_over:  # the directory this rank took over (nothing put aside: nothing to put back)
            self.directory.close(succeeded=True)

    def _record(self, view: EpochView, now: float) -> None:
        config = self.config
        accuracy, loss = evaluate(self._evaluated, view.reference_params, self.data)
        agent_accuracy = [evaluate(self._evaluated, p, self.agent_test)[0] for p in view.agent_params]
        distance_mean, distance_max = consensus_distance(view.agent_params)
        elapsed = max(now - self.last_time, 1e-9)
        record = {
            "epoch": view.epoch,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "agent_accuracy_min": min(agent_accuracy),
            "agent_accuracy_max": max(agent_accuracy),
            "agent_accuracy_std": float(np.std(agent_accuracy)),
            "train_loss": view.stats.mean_loss,
            "wall_seconds": now - self.started,
            "eta_seconds": (now - self.started) / view.epoch * (config.epochs - view.epoch),
            "epoch_seconds": now - self.last_time,
            "samples": view.samples,
            "samples_per_second": (view.samples - self.last_samples) / elapsed,
            "consensus_distance_mean": distance_mean,
            "consensus_distance_max": distance_max,
            "staleness_mean": view.stats.staleness_mean,
            "staleness_max": view.stats.staleness_max,
            "staleness_histogram": {str(k): v for k, v in sorted(view.stats.staleness_histogram.items())},
            "age_mean": view.stats.age_mean,
            "age_max": view.stats.age_top,
            "age_histogram": {str(k): v for k, v in sorted(view.stats.age_histogram.items())},
            "predict_fraction": view.stats.predict_fraction,
            "prediction_ratio_median": view.stats.prediction_ratio_median,
            "prediction_ratios": sum(view.stats.prediction_histogram.values()),
            "lr": config.algorithm.lr_at(float(view.epoch)),
            "iterations": view.iterations,
            "sim_time": view.sim_time,
        }
        self.last_time, self.last_samples = now, view.samples
        self.records.append(record)
        self.writer.write(record)
        self.directory.started()  # the run this one replaced (--overwrite) is deleted only now
        if self.on_epoch is not None:
            self.on_epoch(record)

    def record_world_change(self, event: dict[str, Any]) -> None:
        """A recovery from a dead rank (rank 0, --fault-tolerant): one line of events.jsonl."""
        self.writer.write_event({**event, "wall_seconds": time.perf_counter() - self.started})


def _summary(config: RunConfig, prepared: _Prepared, result, records: list[dict[str, Any]], per_epoch: int) -> dict:
    """What ``summary.json`` holds: the effective configuration, the final metrics and versions."""
    staleness_total = sum(result.staleness.values())
    return {
        "config": config.summary_record(),
        "topology": None
        if prepared.schedule is None
        else {"spec": config.topology, "spectral_gap": prepared.spectral_gap},
        "partition": {
            "spec": config.partition,
            "samples_per_agent": [len(shard) for shard in prepared.shards],
            "classes_per_agent": label_histogram(prepared.labels, prepared.shards, prepared.data.classes),
        },
        "iterations_per_epoch": per_epoch,
        "iterations": result.iterations,
        "staleness": {
            "mean": sum(k * v for k, v in result.staleness.items()) / staleness_total if staleness_total else 0.0,
            "max": max(result.staleness, default=0),
            "histogram": {str(k): v for k, v in sorted(result.staleness.items())},
        },
        "ages": age_summary(result.ages),
        "prediction_quality": prediction_summary(result.prediction_ratios),
        "decisions": dict(result.decisions),
        "world_changes": result.world_changes,
        "resized": None if prepared.payload is None else prepared.payload.get("resized"),
        "final": records[-1],
        "versions": versions(),
    }


def _identity(comm, newcomer: int | None) -> int:
    """This rank's agent for good (its rank in the world the run started in): a newcomer's is the
    agent it replaces."""
    return comm.Get_rank() if newcomer is None else newcomer


def _run(
    config: RunConfig, out: Path, overwrite: bool, on_epoch, comm, deadline, resume, on_start, replacement=None
) -> dict[str, Any] | None:
    """The body of :func:`run_training`; ``comm`` and ``deadline`` are None in the simulator."""
    newcomer = None
    if comm is not None and config.rejoin:
        from pcasgd.runtime.rejoin import newcomer_identity

        newcomer = newcomer_identity(comm)
    prepared = _prepare(config, out, comm, deadline, resume, newcomer)
    payload = prepared.payload
    resumed_records = payload["records"] if payload is not None else ([] if resume else None)
    # Only now, with the data found, the model built and the checkpoint read, is an earlier run's output touched.
    if newcomer is not None:  # a newcomer joins a run whose directory is open: it writes its checkpoints only
        directory = None
    elif comm is not None:
        with deadline.guard("preparing the run directory (collective)"):
            directory = _open_run_directory_everywhere(comm, out, overwrite, resumed_records)
    else:
        directory = _open_run_directory_everywhere(comm, out, overwrite, resumed_records)
    succeeded = False
    try:
        if on_start is not None:
            on_start()
        summary = _train(config, out, prepared, on_epoch, comm, deadline, directory, newcomer, replacement)
        succeeded = summary is not None
        return summary
    finally:
        if directory is not None:
            directory.close(succeeded)


def _train(
    config: RunConfig, out: Path, prepared: _Prepared, on_epoch, comm, deadline, directory, newcomer, replacement
) -> dict | None:
    """Run the engine with the recording hooks; rank 0 writes the model and the summary."""
    model, shards = prepared.model, prepared.shards
    oracle = BatchOracle(model, prepared.data, shards, config.batch_size, config.seed, config.algorithm.weight_decay)
    per_epoch = prepared.per_epoch
    rank = 0 if comm is None else comm.Get_rank()
    identity = rank if comm is None else _identity(comm, newcomer)
    asynchronous = comm is not None and not config.deterministic and config.algorithm.family == "decentralized"
    recording = _Recording(
        config, out, prepared, oracle, directory, on_epoch, identity, background=asynchronous and rank == 0
    )
    payload = prepared.payload
    run = EngineRun(
        config.algorithm,
        prepared.delay_model,
        oracle,
        flatten_parameters(model),
        per_epoch,
        config.epochs,
        recording.record_epoch,
        checkpoint=recording.save_checkpoint if config.checkpoint_every else None,
        resume=payload["engine"] if payload is not None else None,
        record_every=config.eval_every,
        world_change=recording.record_world_change,
        take_over=recording.take_over,
    )
    inputs = EngineInputs(run, config.agents, prepared.schedule, segment_offsets(model), comm, deadline)
    if comm is not None:
        from pcasgd.runtime.exchange import MpiOptions

        staging = HostStaging(prepared.device, stage_through_host(prepared.device, config.host_staging))
        inputs.mpi = MpiOptions(
            config.deterministic,
            config.shared_windows,
            config.progress_thread,
            staging,
            config.fault_tolerant,
            None if replacement is None else tuple(replacement),
        )
    try:
        result = run_engine(config.backend, inputs)
        recording.drain()
        if result is None:
            return None
        load_flat_parameters(model, result.reference_params)
        write_atomically(out / "model.pt", lambda path: torch.save(model.state_dict(), path))
        summary = _summary(config, prepared, result, recording.records, per_epoch)
        write_atomically(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
        return summary
    finally:
        recording.close()
