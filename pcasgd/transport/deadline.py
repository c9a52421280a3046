"""Deadlines for blocking MPI calls, enforced from outside the process.

An MPI call that never returns (a window lock held by a rank that died, a barrier a rank never
reaches) cannot be interrupted from Python, and mpi4py keeps the GIL inside some of those calls,
so a watchdog *thread* would never run. Each rank therefore starts one small watchdog
*process* (``python -m pcasgd.transport.deadline``, exec'd, so it shares nothing with MPI). The
rank writes the call it is about to make and when it started into shared memory (a seqlock);
past the deadline the watchdog prints which rank waited for what, and kills the rank, so the
launcher ends the job instead of letting it hang. It exits by itself when the rank is gone.
"""

from __future__ import annotations

import math
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from pcasgd.errors import ConfigError

if TYPE_CHECKING:  # the watchdog process must not import mpi4py (that would initialise MPI)
    from mpi4py import MPI

POLL_SECONDS = 0.0005
WATCH_SECONDS = 0.05
# The header is a seqlock: a sequence number (uint64 at offset 0) is odd while the writer changes
# the fields after it, and the reader accepts the fields only if the number was even and unchanged
# around its read of them. The number is stored and loaded as one aligned 8-byte word: struct's
# pack_into first zeroes its bytes and then writes them one by one, so a reader could see 0.
SEQ_BYTES = 8
# armed (uint8), started (float64, CLOCK_MONOTONIC), limit (float64 seconds), then ``what``
FIELDS = struct.Struct("<Bdd")
WHAT_BYTES = 400
SIZE = SEQ_BYTES + FIELDS.size + WHAT_BYTES


class Header(NamedTuple):
    armed: bool
    started: float
    limit: float
    what: str


def _store_seq(memory: mmap.mmap, value: int) -> None:
    with memoryview(memory) as raw, raw[:SEQ_BYTES].cast("Q") as word:
        word[0] = value


def _load_seq(memory: mmap.mmap) -> int:
    with memoryview(memory) as raw, raw[:SEQ_BYTES].cast("Q") as word:
        return word[0]


def write_header(memory: mmap.mmap, seq: int, header: Header) -> int:
    """Write ``header`` under the seqlock whose last even number is ``seq``; returns the new one."""
    _store_seq(memory, seq + 1)  # odd: being written
    FIELDS.pack_into(memory, SEQ_BYTES, int(header.armed), header.started, header.limit)
    text = header.what.encode()[:WHAT_BYTES].ljust(WHAT_BYTES, b"\0")
    memory[SEQ_BYTES + FIELDS.size : SIZE] = text
    _store_seq(memory, seq + 2)  # even: consistent
    return seq + 2


def read_header(memory: mmap.mmap) -> Header | None:
    """The header as one write left it, or None if a write was in progress (read again later)."""
    before = _load_seq(memory)
    if before % 2:
        return None
    armed, started, limit = FIELDS.unpack_from(memory, SEQ_BYTES)
    what = bytes(memory[SEQ_BYTES + FIELDS.size : SIZE])
    if _load_seq(memory) != before:
        return None
    return Header(bool(armed), started, limit, what.rstrip(b"\0").decode(errors="replace"))


def _checked(seconds: float) -> float:
    """A deadline is a finite, positive number of seconds: nan or inf would switch it off."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"a deadline must be a finite number of seconds > 0, got {seconds}")
    return float(seconds)


class Deadline:
    def __init__(self, rank: int, seconds: float) -> None:
        self.rank = rank
        self.seconds = _checked(seconds)
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        descriptor, self._path = tempfile.mkstemp(prefix=f"pcasgd-deadline-{rank}-", dir=folder)
        os.ftruncate(descriptor, SIZE)
        self._memory = mmap.mmap(descriptor, SIZE)
        os.close(descriptor)
        self._seq = 0
        self._write(False, 0.0, "", seconds)
        command = [sys.executable, "-m", "pcasgd.transport.deadline", self._path, str(os.getpid()), str(rank)]
        self._watchdog = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        """Stop the watchdog and release the shared memory."""
        if self._watchdog.poll() is None:
            self._watchdog.terminate()
            self._watchdog.wait(timeout=10)
        self._memory.close()
        if os.path.exists(self._path):
            os.unlink(self._path)

    @contextmanager
    def guard(self, what: str, seconds: float | None = None) -> Iterator[None]:
        """Run the block under the deadline (``seconds`` for this block only, if given);
        ``what`` names the wait in the error."""
        limit = self.seconds if seconds is None else _checked(seconds)
        self._write(True, time.monotonic(), what, limit)
        try:
            yield
        finally:
            self._write(False, 0.0, "", limit)

    def wait(self, request: MPI.Request, what: str, seconds: float | None = None) -> None:
        """Complete a non-blocking request without spinning a core, under the deadline."""
        with self.guard(what, seconds):
            while not request.Test():
                time.sleep(POLL_SECONDS)

    def _write(self, armed: bool, started: float, what: str, limit: float) -> None:
        self._seq = write_header(self._memory, self._seq, Header(armed, started, limit, what))


def _watch(path: str, parent: int, rank: int) -> None:
    with open(path, "r+b") as handle:
        memory = mmap.mmap(handle.fileno(), SIZE)
    try:
        while True:
            time.sleep(WATCH_SECONDS)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                return
            header = read_header(memory)
            if header is None:
                continue  # caught mid-write: look again next time
            armed, started, seconds, what = header
            if armed and time.monotonic() - started > seconds:
                sys.stderr.write(
                    f"pcasgd: error (rank {rank}): {what} did not complete within {seconds:g} s "
                    "(a rank died, stalled or was stopped); ending this rank\n"
                )
                sys.stderr.flush()
                os.kill(parent, signal.SIGKILL)
                return
    finally:
        memory.close()
        if os.path.exists(path):  # the rank is gone (or was just killed): nobody else will remove it
            os.unlink(path)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _watch(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
