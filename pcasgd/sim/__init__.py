"""The deterministic in-process simulator: N agents (and a server) in one process.

It is the engine behind ``--backend sim`` and the reference the MPI runtime is checked
against. Each family's step order is documented in its module (the parameter server's in
:mod:`pcasgd.protocol.server`, which the MPI runtime's lock-step mode runs too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.delays import DelayModel
from pcasgd.dispatch import EngineInputs, run_engine
from pcasgd.engine import Checkpoint, EngineResult, EngineRun, EpochHook, GradientOracle
from pcasgd.errors import ConfigError
from pcasgd.topology import Schedule

__all__ = ["simulate"]


def simulate(
    config: AlgorithmConfig,
    agents: int,
    delays: DelayModel,
    oracle: GradientOracle,
    initial_params: Tensor,
    iterations_per_epoch: int,
    epochs: int,
    hook: EpochHook | None = None,
    topology: Schedule | None = None,
    segments: Sequence[int] | None = None,
    checkpoint: Checkpoint | None = None,
    resume: dict[str, Any] | None = None,
    record_every: int = 0,
) -> EngineResult:
    """Run ``config.mode`` with ``agents`` agents (workers, for parameter-server modes).

    ``checkpoint``, ``resume`` and ``record_every``: see :class:`~pcasgd.engine.EngineRun`.
    """
    if iterations_per_epoch < 1 or epochs < 1:
        raise ConfigError("iterations per epoch and epochs must be >= 1")
    run = EngineRun(
        config, delays, oracle, initial_params, iterations_per_epoch, epochs, hook, checkpoint, resume, record_every
    )
    return run_engine("sim", EngineInputs(run, agents, topology, segments))
