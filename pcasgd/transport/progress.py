"""Keeping MPI transfers moving while a rank computes.

Open MPI's shared-memory windows (osc/sm) are plain memory: a neighbour reads them while the
owner computes. Other one-sided transports (osc/ucx without an RDMA network, osc/rdma over
TCP, MPICH without its progress thread) and every non-blocking collective advance only while
the *target* is inside an MPI call: a read of a busy rank's window then waits until that rank
next enters MPI (measured here with ``--mca osc ucx``: 3.8 s, the whole compute span).

:class:`MpiProgress` gives two remedies:

* :meth:`MpiProgress.poke` between steps (always on, a few microseconds): a short burst of
  ``MPI_Iprobe`` calls. One call is not enough: Open MPI runs its low-priority progress
  callbacks, osc/ucx's among them, only on every eighth pass of its progress loop.
* ``thread=True`` (``--progress-thread``): a helper thread pokes every half millisecond, so
  transfers move *during* the compute. torch and NumPy release the GIL while they compute,
  and mpi4py releases it inside MPI calls. It needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default
  request); a library that grants less is refused with a clear error.
"""

from __future__ import annotations

import threading
import time

from mpi4py import MPI

from pcasgd.errors import ConfigError

PROGRESS_TAG = 32_767 - 7  # a tag no message of pcasgd uses: the probe never matches anything
POKE_CALLS = 16  # two full rounds of Open MPI's low-priority progress ratio (8)
THREAD_PERIOD_SECONDS = 0.0005


class MpiProgress:
    """Progress for the one-sided windows and non-blocking collectives of one rank; :meth:`close` it."""

    def __init__(self, comm: MPI.Comm, thread: bool = False) -> None:
        self.comm = comm
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if thread:
            level = MPI.Query_thread()
            if level != MPI.THREAD_MULTIPLE:
                raise ConfigError(
                    "--progress-thread needs an MPI initialised with MPI_THREAD_MULTIPLE "
                    f"(this one granted level {level}); leave it off, or use an MPI built with thread support"
                )
            self._thread = threading.Thread(target=self._run, name="pcasgd-mpi-progress", daemon=True)
            self._thread.start()

    def poke(self) -> None:
        """Enter MPI's progress engine briefly."""
        for _ in range(POKE_CALLS):
            self.comm.Iprobe(MPI.ANY_SOURCE, PROGRESS_TAG)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (a straggler's extra time) while still serving the neighbours' reads."""
        end = time.perf_counter() + seconds
        while (left := end - time.perf_counter()) > 0:
            self.poke()
            time.sleep(min(left, 0.001))

    def _run(self) -> None:
        while not self._stop.wait(THREAD_PERIOD_SECONDS):
            try:
                self.poke()
            except MPI.Exception:  # a rank died (--fault-tolerant): the rank's own loop notices and recovers
                return

    def close(self) -> None:
        """Stop the helper thread (if any); call before the communicator is freed or MPI finalises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MpiProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
