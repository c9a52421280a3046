"""Surviving a dead rank (``--fault-tolerant``) with Open MPI's ULFM (User-Level Failure Mitigation).

Under ``mpirun --with-ft ulfm`` the death of a process does not end the job: the runtime tells
the survivors, and MPI calls that involve the dead process return an error instead of hanging.
What pcasgd does with that, step by step:

* **notice**: every iteration (and while a rank waits) :func:`notice_failures` asks MPI whether
  a process of the communicator has failed or the communicator was revoked; an MPI error of a
  failure class (:func:`is_process_failure`) from any call means the same.
* **agree**: :func:`shrink` revokes the communicator (so every survivor, wherever it waits,
  learns of the failure) and shrinks it: ``MPI_Comm_shrink`` agrees on the dead set and returns
  the survivors in their old order.
* what to rebuild on the new communicator (the graph) is the runtime's business
  (:mod:`pcasgd.runtime.decentralized`).

The settings ULFM needs, checked on these machines (docs/mpi.md): the tcp byte-transfer layer
(with shared memory a collective over a dead rank hung), the ``ftagree`` collectives and
osc/rdma for the windows. :data:`pcasgd.runtime.launch.FAULT_TOLERANT_MCA` holds them and :func:`check_enabled`
refuses a run launched without them.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from mpi4py import MPI

from pcasgd.errors import ConfigError, ProcessFailedError
from pcasgd.runtime.launch import FAULT_TOLERANT_MCA, FT_ENABLE_VARIABLE

_FAILURE_CLASSES = frozenset(
    getattr(MPI, name) for name in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED") if hasattr(MPI, name)
)


# What recoveries left behind: the old communicators and windows. Freeing them is collective over
# the dead ranks too and would hang, so they are kept (never garbage-collected) and never freed.
_abandoned: list[Any] = []


def is_process_failure(error: BaseException, comm: MPI.Comm | None = None) -> bool:
    """Whether ``error`` comes from a failed process: :class:`ProcessFailedError`, an MPI error of
    the failure classes, or any MPI error while ``comm`` has a known failure (creating a window
    with a dead member fails with ``MPI_ERR_WIN``, for one)."""
    if isinstance(error, ProcessFailedError):
        return True
    if not isinstance(error, MPI.Exception):
        return False
    return error.Get_error_class() in _FAILURE_CLASSES or (comm is not None and _failure_known(comm))


def _failure_known(comm: MPI.Comm) -> bool:
    try:
        return comm.Is_revoked() or comm.Get_failed().Get_size() > 0
    except MPI.Exception:
        return True


def check_enabled() -> None:
    """Refuse ``--fault-tolerant`` unless the MPI library and the launch make ULFM work."""
    if not all(hasattr(MPI.Comm, name) for name in ("Shrink", "Revoke", "Get_failed")):
        raise ConfigError("--fault-tolerant needs an MPI with ULFM (MPI_Comm_shrink); this mpi4py/MPI has none")
    if "Open MPI" not in MPI.Get_library_version():
        return  # other ULFM implementations have their own switches: trust the launch
    how = "launch with launch/mpirun.sh --fault-tolerant, or mpirun --with-ft ulfm with " + " ".join(
        f"--mca {name.removeprefix('OMPI_MCA_')} {value}" for name, value in FAULT_TOLERANT_MCA.items()
    )
    if os.environ.get(FT_ENABLE_VARIABLE) != "1":
        raise ConfigError(f"--fault-tolerant needs Open MPI's ULFM turned on at launch: {how}")
    for name, value in FAULT_TOLERANT_MCA.items():
        if os.environ.get(name) != value:
            raise ConfigError(
                f"--fault-tolerant needs {name}={value} (found {os.environ.get(name)!r}): with other components "
                f"a call that involves a dead rank can hang; {how}"
            )


def notice_failures(comm: MPI.Comm) -> None:
    """Raise :class:`ProcessFailedError` if a process of ``comm`` is known to have failed or ``comm``
    was revoked. Enters MPI's progress engine first, which is where failure notices arrive."""
    try:
        comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    except MPI.Exception as error:
        if is_process_failure(error):
            raise ProcessFailedError(str(error)) from None
        raise
    if _failure_known(comm):
        raise ProcessFailedError("a process of the communicator failed")


def shrink(comm: MPI.Comm) -> tuple[MPI.Comm, list[int]]:
    """Revoke ``comm``; return the communicator of its survivors, in their old order, and the
    rank in ``comm`` of each of its ranks.

    Collective over the survivors (each reaches it once it has noticed the failure: revoking
    makes every pending or later call on ``comm`` fail, wherever a survivor waits). The old
    ranks come from the two groups, without a message: an allgather there, struck by a second
    death, once handed one survivor bytes that did not unpickle and no error."""
    try:
        comm.Revoke()
    except MPI.Exception as error:  # already revoked by another survivor: fine
        if not is_process_failure(error):
            raise
    survivors = comm.Shrink()
    survivors.Set_errhandler(MPI.ERRORS_RETURN)
    new_group, old_group = survivors.Get_group(), comm.Get_group()
    try:
        old_ranks = MPI.Group.Translate_ranks(new_group, list(range(survivors.Get_size())), old_group)
    finally:
        new_group.Free()
        old_group.Free()
    return survivors, [int(rank) for rank in old_ranks]


def abandon(*handles: Any) -> None:
    """Keep ``handles`` (a revoked communicator, its windows) unfreed for the rest of the process."""
    _abandoned.extend(handles)


def leave_without_finalize(status: int) -> None:
    """End a ``--fault-tolerant`` rank now, with ``status``, without ``MPI_Finalize``: after a
    recovery it would free what the recovery abandoned, collectively with the dead ranks, and
    hang (checked with osc/rdma); and with ULFM's failure detector on it hung in every run,
    deaths or not (measured on Open MPI 5.0.11: a 3-epoch run held mpirun for its whole 60 s)."""
    from pcasgd.runtime.rejoin import end_in_the_spawned_job

    sys.stdout.flush()
    sys.stderr.flush()
    end_in_the_spawned_job()
    os._exit(status)


def end_without_finalize_at_exit() -> None:
    """At the process's exit, end it without ``MPI_Finalize`` (your own loop after a recovery:
    finalizing would free the abandoned windows with the dead ranks and hang): with status 1 if an
    exception ended the program, else 0 (a ``sys.exit(N)`` status is not kept)."""
    failed = []
    previous = sys.excepthook

    def remember(*info: Any) -> None:
        failed.append(True)
        previous(*info)

    sys.excepthook = remember
    atexit.register(lambda: leave_without_finalize(1 if failed else 0))
