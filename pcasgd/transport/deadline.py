"""Deadlines for blocking MPI calls.

An MPI call that never returns (a lock held by a dead or stopped rank, a barrier a rank never
reaches) cannot be interrupted from Python. One watchdog thread watches the call in progress;
past its deadline it prints which rank waited for what, and ends the process with
:data:`EXIT_DEADLINE`, so the launcher stops the others instead of the job hanging.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mpi4py import MPI

EXIT_DEADLINE = 3
POLL_SECONDS = 0.0005


class Deadline:
    def __init__(self, rank: int, seconds: float) -> None:
        self.rank = rank
        self.seconds = seconds
        self._what: str | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="pcasgd-deadline", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the block under the deadline; ``what`` names the wait in the error."""
        with self._lock:
            self._what, self._started = what, time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._what = None

    def wait(self, request: MPI.Request, what: str) -> None:
        """Complete a non-blocking request without spinning a core, under the deadline."""
        with self.guard(what):
            while not request.Test():
                time.sleep(POLL_SECONDS)

    def _watch(self) -> None:
        while True:
            time.sleep(min(0.1, self.seconds / 10))
            with self._lock:
                what, started = self._what, self._started
            if what is not None and time.monotonic() - started > self.seconds:
                sys.stderr.write(
                    f"pcasgd: error: rank {self.rank}: {what} did not complete within {self.seconds:g} s "
                    "(a rank died, stalled or was stopped); exiting\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_DEADLINE)
