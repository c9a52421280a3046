"""The group of processes a ``--backend mpi`` run trains on.

Every mode runs on ``MPI.COMM_WORLD`` except ``ssgd --comm horovod``, which runs on Horovod's
world: under ``mpirun`` or ``srun`` that is the same processes (Horovod's MPI controller), and
under ``horovodrun --gloo`` it is the only world there is (each process is an MPI singleton).
:class:`HorovodComm` offers that world with the few methods of :class:`mpi4py.MPI.Comm` the
collective runtime and the start-up checks call, so they run unchanged on either.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from pcasgd.errors import ConfigError


class HorovodRequest:
    """A Horovod handle with the ``Test()`` of an MPI request (what :class:`Deadline` polls)."""

    def __init__(self, hvd: Any, handle: Any) -> None:
        self.hvd = hvd
        self.handle = handle
        self._done = False

    def Test(self) -> bool:  # noqa: N802 - mpi4py's name
        if not self._done and self.hvd.poll(self.handle):
            self.hvd.synchronize(self.handle)
            self._done = True
        return self._done


class HorovodComm:
    """Horovod's world, seen through the subset of mpi4py's ``Comm`` pcasgd uses."""

    def __init__(self) -> None:
        try:
            import horovod.torch as hvd
        except ImportError as error:
            raise ConfigError(
                f"--comm horovod needs Horovod ({error}); build it with launch/build-horovod.sh"
            ) from None
        hvd.init()
        self.hvd = hvd
        self._names = itertools.count()

    def Get_rank(self) -> int:  # noqa: N802
        return self.hvd.rank()

    def Get_size(self) -> int:  # noqa: N802
        return self.hvd.size()

    def allgather(self, value: Any) -> list[Any]:
        return self.hvd.allgather_object(value, name=self._name("allgather"))

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        values = self.allgather(value)
        return values if self.Get_rank() == root else None

    def bcast(self, value: Any, root: int = 0) -> Any:
        return self.hvd.broadcast_object(value, root_rank=root, name=self._name("bcast"))

    def Ibarrier(self) -> HorovodRequest:  # noqa: N802
        return HorovodRequest(self.hvd, self.hvd.allreduce_async(torch.zeros(1), name=self._name("barrier")))

    def new_world(self) -> None:
        """Horovod Elastic restarted Horovod over the survivors: name collectives afresh (each
        collective's name must be the same on every rank, and a failure may have struck the
        survivors after different numbers of them)."""
        self._names = itertools.count()

    def _name(self, what: str) -> str:
        return f"pcasgd.{what}.{next(self._names)}"


def open_world(comm: str = "mpi") -> Any:
    """``MPI.COMM_WORLD``, or the Horovod world for ``comm == "horovod"``, or for a process started
    to replace a lost rank (``--rejoin``) the world it joined."""
    if comm == "horovod":
        return HorovodComm()
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ConfigError(
            f"--backend mpi needs mpi4py and an MPI library ({error}); pip install 'pcasgd[mpi]'"
        ) from None
    from pcasgd.runtime.checks import check_not_singletons
    from pcasgd.runtime.rejoin import joined

    newcomer = joined()  # a replacement for a lost rank trains in the world it merged into
    if newcomer is not None:
        return newcomer[0]
    check_not_singletons(MPI.COMM_WORLD)
    return MPI.COMM_WORLD
