"""What defines a training run besides the algorithm's options, validated: ``pcasgd train``'s
flags as one record, which checkpoints compare when a run resumes."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app.data import DATASETS, parse_partition
from pcasgd.dispatch import BACKENDS
from pcasgd.errors import ConfigError
from pcasgd.runtime.device import DEVICES, HOST_STAGING
from pcasgd.runtime.launch import DEFAULT_DEADLINE

SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take it


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
    train_samples: int = 0  # train on a fixed subset of this many training images (0: all of them)
    test_samples: int = 0  # evaluate on a fixed subset of this many test images (0: all of them)
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    deterministic: bool = False  # mpi: lock-step iterations, reproduces the simulator
    deadline: float = DEFAULT_DEADLINE  # mpi: seconds any wait may take before the run fails
    # mpi: seconds the start may take (MPI start-up, rank 0 finding, decoding or downloading the data)
    startup_deadline: float = 600.0
    progress_thread: bool = False  # mpi: a helper thread keeps MPI transfers moving during the compute
    shared_windows: bool = False  # mpi, decentralized: MPI.Win.Allocate_shared (all ranks on one node)
    fault_tolerant: bool = False  # mpi: survive dead ranks (ULFM; ssgd --comm horovod: Horovod Elastic)
    rejoin: bool = False  # with fault_tolerant, decentralized: a replacement for each dead rank joins the run
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
        for name in ("train_samples", "test_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: the whole set), got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: once per epoch), got {self.eval_every}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")
        for name in ("deadline", "startup_deadline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.backend == "sim" and self.algorithm.comm == "horovod":
            raise ConfigError("--comm horovod is for --backend mpi")
        if self.backend == "sim" and self.algorithm.compression != "none":
            raise ConfigError("--compression rounds what MPI sends: it is for --backend mpi")
        if self.backend == "sim" and (
            self.deterministic or self.progress_thread or self.shared_windows or self.fault_tolerant
        ):
            raise ConfigError(
                "--deterministic, --progress-thread, --shared-windows and --fault-tolerant are for --backend mpi"
            )
        if self.fault_tolerant:
            self._check_fault_tolerant()
        if self.rejoin:
            self._check_rejoin()
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        parse_partition(self.partition)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; available: {', '.join(DEVICES)}")
        if self.host_staging not in HOST_STAGING:
            raise ConfigError(f"unknown host staging {self.host_staging!r}; available: {', '.join(HOST_STAGING)}")
        if self.algorithm.comm == "horovod" and self.progress_thread:
            raise ConfigError("--progress-thread is for MPI transfers; Horovod progresses in its own thread")

    def _check_fault_tolerant(self) -> None:
        elastic = self.algorithm.mode == "ssgd" and self.algorithm.comm == "horovod"  # Horovod Elastic
        if self.algorithm.family == "collective" and not elastic:
            raise ConfigError(
                f"--fault-tolerant is built for the decentralized and parameter-server modes, and ssgd --comm horovod "
                f"(Horovod Elastic); {self.algorithm.mode!r} over {self.algorithm.comm} is a collective mode (a dead "
                "rank ends its run: resume it from its checkpoints)"
            )
        if self.deterministic:
            raise ConfigError("--fault-tolerant needs the asynchronous mode: lock-step ranks wait for a dead one")
        if self.shared_windows:
            raise ConfigError("--fault-tolerant runs over the tcp transport that ULFM needs: no --shared-windows")

    def _check_rejoin(self) -> None:
        if not self.fault_tolerant:
            raise ConfigError("--rejoin replaces the ranks a --fault-tolerant run loses: add --fault-tolerant")
        if self.algorithm.family != "decentralized" or self.algorithm.synchronous:
            raise ConfigError(
                f"--rejoin is built for the asynchronous decentralized modes; {self.algorithm.mode!r} "
                "goes on without its dead ranks (or restart it at its new size: launch/elastic.sh)"
            )

    def record(self) -> dict[str, Any]:
        """The effective configuration as plain JSON values (what checkpoints compare)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def summary_record(self) -> dict[str, Any]:
        """What ``summary.json`` says of the configuration: :meth:`record` and the values the
        algorithm derives from its options. A finished run is read back (``pcasgd compare``, the
        benchmarks) only when this equals its summary's: changed defaults rerun it."""
        algorithm = self.algorithm
        derived = {
            "effective_lambda": algorithm.effective_lambda,
            "effective_ms_decay": algorithm.effective_ms_decay,
            "effective_momentum": algorithm.effective_momentum,
        }
        return json.loads(json.dumps({**asdict(self), **derived}, default=str))
