"""A thread that runs jobs one at a time beside a rank's training: the reads of its neighbours'
windows while it computes (``--overlap``), and rank 0's evaluations for records in an
asynchronous run.

Why a thread for the reads and not ``MPI_Rget``: a non-blocking read moves only while its *origin* is inside
MPI. Measured on two test hosts (``launch/hosts.sh up 2 --rate 100mbit``, osc/rdma over tcp,
4 MB read, 0.5 s of compute; ../shared/PLATFORM.md): ``Rget``, compute, ``Wait`` took as long as
the read and the compute one after the other (the ``Wait`` alone 1.0-1.1 s), while a thread that
reads (``Get`` + ``Flush``) as the main thread computes hid the read (total 1.0-1.2 s, the
transfer time). torch releases the GIL inside its kernels and mpi4py inside MPI calls, so the
two threads do run together. Reads from a thread need ``MPI_THREAD_MULTIPLE``, which mpi4py asks
for by default (:func:`require_thread_multiple`).

The thread is a daemon: a job that never returns (a read from a neighbour whose host is gone,
without ``--fault-tolerant``) cannot keep the process alive; the caller waits for it under a
deadline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pcasgd.errors import ConfigError


def require_thread_multiple(what: str) -> None:
    """Refuse ``what`` (a flag) unless MPI was initialised with ``MPI_THREAD_MULTIPLE``."""
    from mpi4py import MPI  # here: the recording thread of a simulator run needs no MPI

    level = MPI.Query_thread()
    if level != MPI.THREAD_MULTIPLE:
        raise ConfigError(
            f"{what} makes MPI calls from a second thread and needs an MPI initialised with MPI_THREAD_MULTIPLE "
            f"(this one granted level {level}); leave {what} off, or use an MPI built with thread support"
        )


class JobThread:
    """Runs submitted jobs one at a time, in order, on a daemon thread named ``name``; :meth:`close` it."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Run ``job`` on the thread; its result or exception comes through the returned future."""
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as error:
                    future.set_exception(error)

    def close(self) -> None:
        """Stop the thread after the job in hand (if it ends within 5 s)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)
            self._thread = None
