"""Which engine runs a mode: one table from (backend, family) to the engine, and how many
processes a run of N agents takes. The CLI, ``compare``, the simulator's ``simulate`` and the
optimizer API all look here, so a family is dispatched in one place.

Engines are imported when they run: the simulator needs no MPI, and the MPI engines import
mpi4py (which starts MPI).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcasgd.engine import EngineResult, EngineRun
from pcasgd.errors import ConfigError
from pcasgd.topology import Schedule

BACKENDS = ("sim", "mpi")
FAMILIES = ("decentralized", "server", "collective")


def ranks_needed(family: str, agents: int) -> int:
    """Processes (MPI ranks) a run of ``agents`` agents takes: parameter servers add rank 0."""
    return agents + 1 if family == "server" else agents


def agents_in(family: str, ranks: int) -> int:
    """Agents (workers) a world of ``ranks`` processes holds."""
    return ranks - 1 if family == "server" else ranks


@dataclass
class EngineInputs:
    """What an engine may need beyond the run: the graph and the model's tensor offsets
    (decentralized), and under MPI the process group, the watchdog and the transport options."""

    run: EngineRun
    agents: int
    schedule: Schedule | None = None
    segments: Sequence[int] | None = None
    comm: Any = None
    deadline: Any = None
    mpi: Any = field(default=None)  # pcasgd.runtime.decentralized.MpiOptions


def _sim_decentralized(inputs: EngineInputs) -> EngineResult:
    from pcasgd.sim.decentralized import simulate_decentralized

    if inputs.schedule is None:
        raise ConfigError(f"mode {inputs.run.config.mode!r} needs a topology")
    if inputs.schedule.size != inputs.agents:
        raise ConfigError(f"topology has {inputs.schedule.size} agents, the run has {inputs.agents}")
    return simulate_decentralized(inputs.run, inputs.schedule, inputs.segments)


def _sim_server(inputs: EngineInputs) -> EngineResult:
    from pcasgd.protocol.server import serve_in_simulated_time

    return serve_in_simulated_time(inputs.run, inputs.agents)


def _sim_collective(inputs: EngineInputs) -> EngineResult:
    from pcasgd.sim.collective import simulate_collective

    return simulate_collective(inputs.run, inputs.agents)


def _mpi_decentralized(inputs: EngineInputs) -> EngineResult | None:
    from pcasgd.runtime.decentralized import DecentralizedRank

    rank = DecentralizedRank(inputs.comm, inputs.run, inputs.schedule, inputs.segments, inputs.mpi, inputs.deadline)
    return rank.train()


def _mpi_server(inputs: EngineInputs) -> EngineResult | None:
    from pcasgd.runtime.parameter_server import run_parameter_server

    return run_parameter_server(
        inputs.comm, inputs.run, inputs.deadline, inputs.mpi.deterministic, inputs.mpi.fault_tolerant
    )


def _mpi_collective(inputs: EngineInputs) -> EngineResult | None:
    from pcasgd.runtime.collective import run_collective

    options = inputs.mpi
    return run_collective(
        inputs.comm, inputs.run, inputs.deadline, options.progress_thread, options.staging, options.fault_tolerant
    )


ENGINES: dict[tuple[str, str], Callable[[EngineInputs], EngineResult | None]] = {
    ("sim", "decentralized"): _sim_decentralized,
    ("sim", "server"): _sim_server,
    ("sim", "collective"): _sim_collective,
    ("mpi", "decentralized"): _mpi_decentralized,
    ("mpi", "server"): _mpi_server,
    ("mpi", "collective"): _mpi_collective,
}


def run_engine(backend: str, inputs: EngineInputs) -> EngineResult | None:
    """Run ``inputs.run`` on its family's engine for ``backend``; under MPI, ranks other than the
    one holding the result get None."""
    return ENGINES[(backend, inputs.run.config.family)](inputs)
