"""What a training loop of your own needs besides the optimizer: the MPI world, broadcasts at
start, averaged metrics, and the agents' average model for evaluation (Horovod's names where
Horovod has one).

    comm = pcasgd.init()                              # once per process, on every rank
    torch.cuda.set_device(pcasgd.local_rank())        # one GPU per rank on a node
    pcasgd.broadcast_parameters(model.state_dict(), root_rank=0)
    pcasgd.broadcast_optimizer_state(optimizer, root_rank=0)
    ...
    accuracy = pcasgd.allreduce(torch.tensor(accuracy), name="accuracy").item()
    with pcasgd.averaged_model(model):                # the agents' mean weights, for evaluation
        evaluate(model)

Every call here except :func:`rank`, :func:`size`, :func:`local_rank` and :func:`local_size` is
collective: every rank makes it, in the same order. Each wait is bounded by the deadline given
to :func:`init` (a rank that never arrives ends the job with an error naming the call).
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pcasgd.errors import ConfigError, UsageError
from pcasgd.flat import copy_into_parameters

Broadcastable = nn.Module | Mapping[str, Tensor] | Iterable[Tensor] | Iterable[tuple[str, Tensor]]
OPERATIONS = ("average", "sum", "min", "max")


@dataclass
class _World:
    comm: Any  # MPI.Comm
    node: Any  # the ranks on this rank's node (MPI.COMM_TYPE_SHARED)
    deadline: Any  # pcasgd.transport.deadline.Deadline for the helpers' waits


_world: _World | None = None


def init(deadline: float = 600.0):
    """Initialise MPI (through mpi4py) and return ``MPI.COMM_WORLD``. Collective: call it once,
    on every rank, before the other functions here. ``deadline``: seconds any of their waits may
    take (a broadcast, an allreduce, the model average). pcasgd's messages (a rank's death
    survived, a warning) go to stderr from then on (:mod:`pcasgd.log`)."""
    global _world
    from mpi4py import MPI

    from pcasgd import log
    from pcasgd.transport.deadline import Deadline

    log.to_stderr()
    if _world is None:
        comm = MPI.COMM_WORLD
        watchdog = Deadline(comm.Get_rank(), deadline)
        with watchdog.guard("finding the ranks on this node (collective, in pcasgd.init)"):
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        _world = _World(comm, node, watchdog)
        atexit.register(watchdog.close)
    else:
        _world.deadline.seconds = deadline
    return _world.comm


def world_changed(old: Any, new: Any) -> None:
    """A dead rank was survived (``fault_tolerant``): the world of :func:`init` was ``old`` and is
    ``new`` (the survivors) from now on, for :func:`rank`, :func:`size` and the helpers here."""
    if _world is not None and _world.comm is old:
        _world.comm = new


def _initialised() -> _World:
    if _world is None:
        raise UsageError("pcasgd has not been initialised: call pcasgd.init() first, on every rank")
    return _world


def rank() -> int:
    """This process's rank in the world."""
    return _initialised().comm.Get_rank()


def size() -> int:
    """The number of ranks."""
    return _initialised().comm.Get_size()


def local_rank() -> int:
    """This process's rank among the ranks on its node (the GPU to use)."""
    return _initialised().node.Get_rank()


def local_size() -> int:
    """The number of ranks on this process's node."""
    return _initialised().node.Get_size()


def _tensors_of(tensors: Broadcastable) -> list[Tensor]:
    if isinstance(tensors, nn.Module):
        found = [*tensors.parameters(), *tensors.buffers()]
    elif isinstance(tensors, Mapping):
        found = list(tensors.values())
    else:
        found = [item[1] if isinstance(item, tuple) else item for item in tensors]
    bad = [type(t).__name__ for t in found if not isinstance(t, Tensor)]
    if bad:
        raise ConfigError(f"expected tensors; got {', '.join(sorted(set(bad)))}")
    return found


def broadcast_parameters(tensors: Broadcastable, root: int = 0, comm=None, *, root_rank: int | None = None) -> None:
    """Overwrite every rank's tensors with ``root``'s, in place (call once, before training).

    ``tensors``: a module (its parameters and its buffers, such as BatchNorm's running
    statistics), a ``state_dict()``, or an iterable of tensors or of ``(name, tensor)`` pairs
    (``named_parameters()``), as Horovod's ``broadcast_parameters`` takes them. ``root_rank`` is
    Horovod's name for ``root``. Tensors are sent in one message per dtype.
    """
    world = _world_for(comm)
    root = root if root_rank is None else root_rank
    given = list(_tensors_of(tensors))
    _check_same_tensors(world, given, root)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in given:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    with torch.no_grad():
        for dtype, group in by_dtype.items():
            flat = torch.cat([t.detach().reshape(-1).cpu() for t in group])
            wire = flat.view(torch.int16) if dtype == torch.bfloat16 else flat  # the same bits: numpy has no bf16
            request = world.comm.Ibcast(wire.numpy(), root=root)
            world.deadline.wait(request, f"broadcasting the {dtype} tensors from rank {root} (collective)")
            copy_into_parameters(group, flat)


def _check_same_tensors(world: _World, tensors: list[Tensor], root: int) -> None:
    """Raise on every rank, before anything is overwritten, if a rank's tensors differ from
    ``root``'s in number, shape or dtype (the broadcast would otherwise fill them in part)."""
    mine = [(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors]
    with world.deadline.guard("comparing the tensors to broadcast (collective)"):
        everyone = world.comm.allgather(mine)
    reference = everyone[root]
    for rank, theirs in enumerate(everyone):
        if theirs == reference:
            continue
        if len(theirs) != len(reference):
            raise ConfigError(
                f"broadcast_parameters: rank {rank} has {len(theirs)} tensors and rank {root} {len(reference)}"
            )
        index = next(i for i, (a, b) in enumerate(zip(theirs, reference, strict=True)) if a != b)
        raise ConfigError(
            f"broadcast_parameters: tensor {index} is {theirs[index][0]} {theirs[index][1]} on rank {rank} and "
            f"{reference[index][0]} {reference[index][1]} on rank {root} (a different model on each rank?)"
        )


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root: int = 0, *, root_rank: int | None = None) -> None:
    """Give every rank ``root``'s optimizer state and hyper-parameters (momentum buffers, lr, ...),
    as Horovod's function of that name: call it after :func:`broadcast_parameters`, before training.

    A :class:`~pcasgd.DecentralizedOptimizer` or :class:`~pcasgd.CollectiveOptimizer` shares the
    state of the torch optimizer it wraps; either may be passed."""
    world = _initialised()
    root = root if root_rank is None else root_rank
    inner = getattr(optimizer, "optimizer", optimizer)  # a pcasgd wrapper: its torch optimizer
    state = inner.state_dict() if world.comm.Get_rank() == root else None
    with world.deadline.guard(f"broadcasting the optimizer state from rank {root} (collective)"):
        state = world.comm.bcast(_to_cpu(state), root=root)
    inner.load_state_dict(state)  # torch moves each state tensor to its parameter's device


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value


def allreduce(tensor: Tensor | float, name: str | None = None, op: str = "average", comm=None) -> Tensor:
    """Every rank's ``tensor`` reduced over the ranks (``op``: average, sum, min or max), as a
    new tensor on ``tensor``'s device and of its dtype, for metrics (Horovod's ``allreduce``).
    ``name`` labels the call in a deadline error."""
    if op not in OPERATIONS:
        raise ConfigError(f"op must be one of {', '.join(OPERATIONS)}, got {op!r}")
    world = _world_for(comm)
    from mpi4py import MPI

    value = tensor if isinstance(tensor, Tensor) else torch.tensor(tensor)
    exact = value.detach().cpu()
    send = np.ascontiguousarray((exact.float() if exact.dtype == torch.bfloat16 else exact).numpy())
    receive = np.empty_like(send)
    reduce = {"average": MPI.SUM, "sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}[op]
    request = world.comm.Iallreduce(send, receive, op=reduce)
    world.deadline.wait(request, f"the allreduce {name!r} (collective)" if name else "an allreduce (collective)")
    result = torch.from_numpy(receive)
    result = result / world.comm.Get_size() if op == "average" else result
    return result.to(device=value.device, dtype=value.dtype)


@contextmanager
def averaged_model(model: nn.Module, buffers: bool = True) -> Iterator[nn.Module]:
    """Inside the block, ``model`` holds the mean of every rank's weights (and floating-point
    buffers, such as BatchNorm's running statistics, unless ``buffers=False``); its own come back
    after the block. Decentralized agents each hold a different model: their average is the one
    to evaluate, as ``pcasgd train`` reports it. Collective."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if buffers and b.is_floating_point())]
    with torch.no_grad():
        own = [t.detach().clone() for t in tensors]
        for dtype in {t.dtype for t in tensors}:
            group = [t for t in tensors if t.dtype == dtype]
            mean = allreduce(torch.cat([t.detach().reshape(-1) for t in group]), name="model average")
            copy_into_parameters(group, mean)
    try:
        yield model
    finally:
        with torch.no_grad():
            for tensor, saved in zip(tensors, own, strict=True):
                tensor.copy_(saved)


def _world_for(comm) -> _World:
    """The world of :func:`init`, over ``comm`` when the caller passes a communicator of its own."""
    world = _initialised()
    return world if comm is None or comm is world.comm else _World(comm, world.node, world.deadline)
