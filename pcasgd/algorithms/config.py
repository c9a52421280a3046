"""Every training mode's options in one validated record (see docs/algorithms.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from pcasgd.errors import ConfigError

DECENTRALIZED_MODES = ("dsgd", "asgd", "pcasgd", "pcasgd-pv", "predict", "clip")
SERVER_MODES = ("ps-asgd", "dcasgd-c", "dcasgd-a", "sasgd")
COLLECTIVE_MODES = ("ssgd", "odsgd")
MODES = DECENTRALIZED_MODES + SERVER_MODES + COLLECTIVE_MODES


#: Hessian-approximation factor lambda when the user gives none (sources in ALGORITHMS.md).
DEFAULT_LAMBDA = {"dcasgd-c": 0.04, "dcasgd-a": 2.0, "pcasgd": 1.0, "pcasgd-pv": 1.0, "predict": 1.0, "odsgd": 2.0}

#: Modes whose lambda --lam-adaptive makes adaptive (dcasgd-a is adaptive by definition).
ADAPTIVE_LAMBDA_MODES = ("pcasgd", "pcasgd-pv", "predict", "dcasgd-a")

CHOICES = {
    "predictor": ("draft", "taylor", "extrapolate", "momentum", "trajectory"),
    "clip_weights": ("rescale", "uniform"),
    "pv_scope": ("model", "tensor"),
    "sasgd_lr": ("inverse", "average", "constant"),
    "odsgd_local_opt": ("sgd", "dc"),
    "comm": ("mpi", "horovod"),
    "compression": ("none", "fp16", "bf16"),
}


@dataclass(frozen=True)
class AlgorithmConfig:
    """Options of every mode; each mode reads the ones it needs.

    Defaults marked [choice] in ALGORITHMS.md are provisional until the accuracy benchmarks
    (docs/RESULTS.md) decide them.
    """

    mode: str = "pcasgd"
    lr: float = 0.1
    # learning-rate schedule over epochs: constant, step:E1,E2,... (times lr_decay at each), cosine:EPOCHS
    lr_schedule: str = "constant"
    lr_decay: float = 0.1
    lr_warmup_epochs: float = 0.0  # linear warm-up from lr/10 to the schedule's value
    weight_decay: float = 0.0  # L2 term added to every gradient: g + weight_decay * x
    momentum: float | None = None  # None: the mode's default (effective_momentum)
    # pcasgd family
    theta: float = 0.5  # [choice] tradeoff between predict (1) and clip (0)
    predictor: str = "taylor"  # [choice]
    clip_weights: str = "rescale"  # [choice]
    lam: float | None = None  # None: the mode's DEFAULT_LAMBDA
    lam_adaptive: bool = False
    ms_decay: float | None = None  # None: the mode's default (effective_ms_decay)
    eps: float = 1e-7
    age_fresh: float = 2.0  # [choice] largest neighbour-step age still counted fresh
    age_max: float = 2.0  # [choice] cap on the age a predictor extrapolates over
    pv_warmup_epochs: float = 5.0
    pv_scope: str = "model"  # [choice]
    history: int = 16  # own-parameter snapshots kept for the draft predictor
    # parameter server
    sasgd_n: int = 1
    sasgd_lr: str = "inverse"
    # odsgd
    odsgd_local_lr: float | None = None  # None: same as lr
    odsgd_warmup: int = 200
    odsgd_local_opt: str = "sgd"
    odsgd_overlap: bool = True  # False: each allreduce completes before the local step (blocking)
    comm: str = "mpi"  # ssgd on MPI: "mpi" (MPI allreduce) or "horovod" (Horovod's allreduce)
    # decentralized modes: reads of the neighbours fly while the gradient is computed (ALGORITHMS.md,
    # "Revision 2"); dsgd then mixes exactly x_j^(k-1)
    overlap: bool = False
    # what the exchange sends: decentralized snapshots, or ssgd's and odsgd's gradients, in half
    # precision (half the bytes; Horovod's Compression.fp16); the arithmetic stays in full precision
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        for name, accepted in CHOICES.items():
            if getattr(self, name) not in accepted:
                raise ConfigError(f"{name} must be one of {', '.join(accepted)}, got {getattr(self, name)!r}")
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
        if self.lam_adaptive and self.mode not in ADAPTIVE_LAMBDA_MODES:
            hint = "; dcasgd-a is its adaptive variant" if self.mode == "dcasgd-c" else ""
            raise ConfigError(
                f"--lam-adaptive applies to {', '.join(ADAPTIVE_LAMBDA_MODES)}; {self.mode} would ignore it{hint}"
            )
        if self.lam_adaptive and self.predictor == "trajectory":
            raise ConfigError("--lam-adaptive: the trajectory predictor uses no gradient, and no lambda")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.theta <= 1:
            raise ConfigError(f"theta must be in [0, 1], got {self.theta}")
        if self.lam is not None and self.lam < 0:
            raise ConfigError(f"lambda must be >= 0, got {self.lam}")
        if self.ms_decay is not None and not 0 <= self.ms_decay < 1:
            raise ConfigError(f"ms_decay must be in [0, 1), got {self.ms_decay}")
        if self.age_fresh < 0 or self.age_max <= 0:
            raise ConfigError(f"age_fresh must be >= 0 and age_max > 0, got {self.age_fresh} and {self.age_max}")
        if self.history < 1 or self.sasgd_n < 1 or self.odsgd_warmup < 0:
            raise ConfigError("odsgd_warmup must be >= 0; history, sasgd_n must be >= 1")
        if self.odsgd_local_lr is not None and self.odsgd_local_lr < 0:
            raise ConfigError(f"odsgd_local_lr must be >= 0, got {self.odsgd_local_lr}")
        if self.comm == "horovod" and self.mode != "ssgd":
            raise ConfigError(f"--comm horovod is for ssgd; {self.mode} exchanges through MPI")
        if not 0 < self.lr_decay <= 1 or self.lr_warmup_epochs < 0 or self.weight_decay < 0:
            raise ConfigError("lr_decay must be in (0, 1]; lr_warmup_epochs and weight_decay must be >= 0")
        self._schedule_points()  # validates lr_schedule
        if self.overlap and self.family != "decentralized":
            hint = (
                " (odsgd overlaps its allreduce itself; --odsgd-no-overlap turns it off)"
                if self.mode == "odsgd"
                else ""
            )
            raise ConfigError(f"--overlap is for the decentralized modes; {self.mode} would ignore it{hint}")
        if self.compression != "none" and self.family == "server":
            raise ConfigError(
                f"--compression is for the decentralized and collective modes; {self.mode} would ignore it"
            )
        if self.compression != "none" and self.comm == "horovod":
            raise ConfigError("--compression is pcasgd's own exchange; with --comm horovod use Horovod's")
        if self.compression == "bf16" and self.family == "collective":
            raise ConfigError(
                "--compression bf16: MPI sums no bfloat16, so the allreduce would send float32 and save nothing; "
                "use fp16"
            )
        if self.pv_warmup_epochs < 0:
            raise ConfigError(f"pv_warmup_epochs must be >= 0, got {self.pv_warmup_epochs}")

    def _schedule_points(self) -> tuple[str, list[float]]:
        kind, _, points = self.lr_schedule.partition(":")
        try:
            values = [float(point) for point in points.split(",")] if points else []
        except ValueError:
            values = [-1.0]
        finite = all(math.isfinite(v) for v in values)  # step:1e400 is inf: a decay that never comes
        valid = finite and (
            (kind == "constant" and not values)
            or (kind == "step" and values and all(v > 0 for v in values))
            or (kind == "cosine" and len(values) == 1 and values[0] > 0)
        )
        if not valid:
            raise ConfigError(
                f"unknown lr schedule {self.lr_schedule!r}; use constant, step:E1,E2,... or cosine:EPOCHS"
            )
        return kind, values

    def lr_at(self, epoch: float) -> float:
        """The learning rate at (fractional) ``epoch``: schedule, then linear warm-up."""
        kind, points = self._schedule_points()
        if kind == "step":
            lr = self.lr * self.lr_decay ** sum(epoch >= point for point in points)
        elif kind == "cosine":
            lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * min(epoch / points[0], 1.0)))
        else:
            lr = self.lr
        if epoch < self.lr_warmup_epochs:
            lr *= 0.1 + 0.9 * epoch / self.lr_warmup_epochs
        return lr

    @property
    def effective_lambda(self) -> float:
        """lambda if given, else the mode's default; odsgd reads it only with its dc local optimizer."""
        if self.mode == "odsgd" and self.odsgd_local_opt != "dc":
            return 0.0
        return DEFAULT_LAMBDA.get(self.mode, 0.0) if self.lam is None else self.lam

    @property
    def effective_ms_decay(self) -> float:
        """MeanSquare decay m if given, else 0 for odsgd (its reference code) and 0.95 otherwise."""
        if self.ms_decay is not None:
            return self.ms_decay
        return 0.0 if self.mode == "odsgd" else 0.95

    @property
    def effective_momentum(self) -> float:
        """0.9 unless given, but 0 for a server that does not wait for its workers (ps-asgd, dcasgd-*,
        softsync sasgd): staleness already acts as momentum there, and mu = 0.9 diverged
        (docs/algorithms.md)."""
        if self.momentum is not None:
            return self.momentum
        return 0.0 if self.family == "server" and not self.synchronous else 0.9

    @property
    def effective_theta(self) -> float:
        """theta as the mode fixes it: predict-only 1, clip-only 0, else the option."""
        return {"predict": 1.0, "clip": 0.0}.get(self.mode, self.theta)

    def local_lr_at(self, epoch: float) -> float:
        """odsgd's local learning rate: the scheduled lr, scaled by ``odsgd_local_lr / lr`` if given,
        so an explicit local rate follows the same schedule and warm-up as the global one."""
        return self.local_lr_for(self.lr_at(epoch))

    def local_lr_for(self, scheduled: float) -> float:
        """odsgd's local learning rate when the global one is ``scheduled`` (by a torch scheduler)."""
        return scheduled if self.odsgd_local_lr is None else scheduled * self.odsgd_local_lr / self.lr

    def ignored(self, given: Iterable[str]) -> list[str]:
        """Which of the options ``given`` (field names) this mode never reads: a user who sets
        one expects an effect it cannot have (``--lam 5`` with ``clip`` reported lambda 5)."""
        reads = {
            "theta": self.mode == "pcasgd",
            "predictor": self.predicts,
            "lam": self.mode in ("dcasgd-c", "dcasgd-a")
            or (self.mode == "odsgd" and self.odsgd_local_opt == "dc")
            or (self.predicts and self.predictor != "trajectory"),
        }
        return [name for name in given if not reads.get(name, True)]

    @property
    def predicts(self) -> bool:
        """Whether the mode runs a predictor (the pcasgd family, but clip-only)."""
        return self.mode in ("pcasgd", "pcasgd-pv", "predict")

    @property
    def publishes_displacement(self) -> bool:
        """Whether snapshots carry the publisher's last local step (``d_j``, its velocity ``v_j``
        under momentum SGD): the extrapolate and momentum predictors read it."""
        return self.predicts and self.predictor in ("extrapolate", "momentum")

    @property
    def snapshot_vectors(self) -> tuple[str, ...]:
        """What a published snapshot holds, and a neighbour reads: the parameters; the gradient
        where a predictor (or the adaptive lambda) reads it; the displacement where a predictor
        continues it. On a slow link the bytes of a read are what a step waits for (or hides)."""
        return (
            ("params",)
            + (("grad",) if self.predicts else ())
            + (("displacement",) if self.publishes_displacement else ())
        )

    @property
    def keeps_history(self) -> bool:
        """Whether an agent keeps its own last ``history`` parameter vectors (the draft predictor's)."""
        return self.predicts and self.predictor == "draft"

    @property
    def family(self) -> str:
        if self.mode in DECENTRALIZED_MODES:
            return "decentralized"
        return "server" if self.mode in SERVER_MODES else "collective"

    @property
    def synchronous(self) -> bool:
        """Protocols that wait for their peers, so an injected lag costs them time, not staleness.

        dsgd and ssgd wait every step; odsgd keeps one reduction in flight (a slow reduction
        delays the next step); hardsync sasgd (n = 1) makes workers wait for each update.
        """
        return self.mode in ("dsgd", "ssgd", "odsgd") or (self.mode == "sasgd" and self.sasgd_n == 1)

    def with_changes(self, **changes: Any) -> AlgorithmConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
