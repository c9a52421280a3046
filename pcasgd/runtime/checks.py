"""Checks made on every rank before training: one clear error on every rank, never a hang later."""

from __future__ import annotations

from mpi4py import MPI
from torch import nn

from pcasgd.errors import ConfigError


def check_world_size(comm: MPI.Comm, ranks: int) -> None:
    """``ranks``: the agents, plus the server for parameter-server modes."""
    size = comm.Get_size()
    if size == ranks:
        return
    hint = (
        " (each process sees a world of 1: they were started as singletons; launch with `mpirun -n N`, "
        "or `srun --mpi=pmix` with an MPI that matches mpi4py's)"
        if size == 1
        else ""
    )
    raise ConfigError(f"the run needs {ranks} ranks but the MPI world has {size}{hint}")


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
