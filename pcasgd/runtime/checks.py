"""Checks made on every rank before training: one clear error on every rank, never a hang later."""

from __future__ import annotations

import os

from mpi4py import MPI
from torch import nn

from pcasgd.errors import ConfigError

# Variables in which launchers tell each process how many they started.
LAUNCHER_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "HOROVOD_SIZE")


# Variables in which launchers tell each process how many ranks share its node.
LAUNCHER_LOCAL_SIZES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def check_window_memory(numel: int, itemsize: int, max_lag: int, slots: int, vectors: int = 2) -> None:
    """Refuse an injected lag whose snapshot rings (``slots`` per rank, ``max_lag`` plus what the
    protocol needs besides, of ``vectors`` model-sized vectors each) would not fit in this node's
    memory, before MPI is asked for them (it would fail after minutes, or be killed)."""
    from pcasgd.transport.windows import window_bytes

    local = next((int(os.environ[name]) for name in LAUNCHER_LOCAL_SIZES if os.environ.get(name, "").isdigit()), 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = window_bytes(numel, itemsize, slots, vectors=vectors)
    if need * local > memory:
        empty = window_bytes(numel, itemsize, 0, vectors=vectors)
        fit = (memory // local - empty) // (window_bytes(numel, itemsize, 1, vectors=vectors) - empty)
        most = max(0, fit - (slots - max_lag))
        raise ConfigError(
            f"a lag of {max_lag} iterations needs {slots} snapshot slots per rank: {need / 2**30:.3g} GiB of window "
            f"memory for each of the {local} rank(s) on this node, more than its {memory / 2**30:.3g} GiB; "
            f"this model allows lags up to {most}"
        )


def _singleton_hint() -> str:
    if "HOROVOD_RANK" in os.environ:
        return (
            " (horovodrun --gloo starts its processes without an MPI world: only `--mode ssgd --comm horovod` "
            "runs there; launch the other modes with `mpirun -n N` or `srun --mpi=pmix`)"
        )
    return (
        " (each process sees a world of 1: they were started as singletons; launch with `mpirun -n N`, "
        "or `srun --mpi=pmix` with an MPI that matches mpi4py's)"
    )


def check_not_singletons(comm: MPI.Comm) -> None:
    """A launcher that started N > 1 processes which each see an MPI world of 1 (wrong MPI, wrong launcher)."""
    if comm.Get_size() != 1:
        return
    for name in LAUNCHER_SIZES:
        started = os.environ.get(name, "1")
        if started.isdigit() and int(started) > 1:
            raise ConfigError(
                f"the launcher started {started} processes ({name}) but the MPI world has 1" + _singleton_hint()
            )


def check_world_size(comm: MPI.Comm, ranks: int) -> None:
    """``ranks``: the agents, plus the server for parameter-server modes."""
    size = comm.Get_size()
    if size != ranks:
        raise ConfigError(
            f"the run needs {ranks} ranks but the MPI world has {size}" + (_singleton_hint() if size == 1 else "")
        )


def check_same_everywhere(comm: MPI.Comm, what: str, value: str) -> None:
    """Raise on every rank if ``value`` differs between ranks, naming the ranks that differ."""
    values = comm.allgather(value)
    differing = [rank for rank, other in enumerate(values) if other != values[0]]
    if differing:
        raise ConfigError(
            f"{what} differs between ranks: rank 0 has {values[0]}, rank {differing[0]} has {values[differing[0]]}"
            + (f" (ranks differing from rank 0: {differing})" if len(differing) > 1 else "")
        )


def model_signature(model: nn.Module) -> str:
    return ";".join(f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in model.named_parameters())
