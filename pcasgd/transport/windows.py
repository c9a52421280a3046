"""MPI one-sided windows: each rank's versioned snapshots, and one control word for the run.

Layout of a :class:`SnapshotWindow` (bytes, all fields 8-byte aligned)::

    header  float64[2 + V]    latest stamp (-1: none yet), flags, then V values the owner publishes
    slot 0  float64[4] stamp, publish time, step period, run progress; params[n], grad[n]
            (and displacement[n] when the window carries it: the extrapolate predictor's d_j)
    ...
    slot D-1

Nobody takes a lock that can conflict: every lock epoch is opened with ``MPI_MODE_NOCHECK``
(passive-target access needs an epoch; the assertion says no conflicting lock exists, which is
true because nobody takes one). Real locks failed twice here: with osc/rdma over tcp across
hosts an owner's exclusive lock on its own window waited for ever at the first publish (its lock
word is updated by local and by emulated remote atomics), and a rank that dies while it holds a
shared lock on a neighbour's window never releases it. Instead the owner publishes in an order
readers can check: it marks the slot's stamp invalid, writes the vectors, writes the slot's
metadata, then the header, each completed (``Flush``) before the next; a reader gets the slot,
completes the transfer, and gets the slot's stamp again: a read whose stamp is not the expected
one both times was torn by a rewrite and is retried, so a read is never torn. No
``Compare_and_swap`` (it crashes Open MPI 4.1 targets). Windows are freed by :meth:`close`
(collective), never from ``__del__``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from pcasgd.algorithms.consensus import Snapshot
from pcasgd.transport.staging import HostStaging

#: The header's fixed part (float64 each): the newest stamp and the flags. The values after it
#: (integers stay exact below 2**53) mean what the code that publishes them says.
HEADER_FIXED = 2

#: A slot's metadata (float64 each): stamp, publish time, step period, run progress.
SLOT_META = 4

FLAG_FINISHED = 1
FLAG_FAILED = 2


@dataclass(frozen=True)
class Read:
    """A neighbour's snapshot (``None``: nothing published yet), and its header: newest stamp,
    flags and published values."""

    snapshot: Snapshot | None
    stamp: int
    flags: int
    values: np.ndarray


def header_bytes(values: int) -> int:
    return 8 * (HEADER_FIXED + values)


def window_bytes(numel: int, itemsize: int, slots: int, values: int = 0, vectors: int = 2) -> int:
    """Bytes of one rank's snapshot window: the header and ``slots`` slots of metadata and
    ``vectors`` model-sized vectors (parameters, gradient, and the displacement if carried)."""
    return header_bytes(values) + slots * (8 * SLOT_META + vectors * numel * itemsize)


class SnapshotWindow:
    """A ring of ``slots`` snapshots per rank (``slots = max_lag + 2`` makes injected lags exact),
    and a header of ``values`` numbers the owner publishes with each snapshot; ``displacement``:
    the snapshots carry the publisher's last local step."""

    def __init__(
        self,
        comm: MPI.Comm,
        numel: int,
        dtype: torch.dtype,
        slots: int,
        shared: bool = False,
        staging: HostStaging | None = None,
        values: int = 0,
        displacement: bool = False,
    ) -> None:
        self.comm = comm
        self.staging = staging if staging is not None else HostStaging(torch.device("cpu"), active=False)
        self.rank = comm.Get_rank()
        self.numel = numel
        self.dtype = dtype
        self.np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.slots = slots
        self.vectors = ("params", "grad", "displacement") if displacement else ("params", "grad")
        self._payload_bytes = numel * self.np_dtype.itemsize
        self.slot_bytes = 8 * SLOT_META + len(self.vectors) * self._payload_bytes
        self._header_bytes = header_bytes(values)
        size = window_bytes(numel, self.np_dtype.itemsize, slots, values, len(self.vectors))
        allocate = MPI.Win.Allocate_shared if shared else MPI.Win.Allocate
        self.win: MPI.Win | None = allocate(size, 1, comm=comm)
        self._header = np.zeros(HEADER_FIXED + values)
        self._header[0] = -1.0
        self._meta = np.zeros(SLOT_META)
        self._read_header = np.zeros(HEADER_FIXED + values)
        self._read_meta = np.zeros(SLOT_META)
        self._invalid_stamp = np.full(1, -1.0)
        self._check_stamp = np.zeros(1)
        self._write_header()
        comm.Barrier()

    # -- owner side -----------------------------------------------------------------------------

    def publish(self, snapshot: Snapshot, values: np.ndarray | None = None) -> None:
        """Write ``snapshot`` into the slot of its stamp and the header, atomically for readers.

        The payload goes straight from the tensors' memory (no copy on the CPU; a pinned host copy
        of GPU tensors unless MPI reads GPU memory: :class:`~pcasgd.transport.staging.HostStaging`).
        """
        if (snapshot.displacement is not None) != ("displacement" in self.vectors):
            raise ValueError("a snapshot carries a displacement exactly when its window was made to hold one")
        payloads = [
            self.staging.to_host(getattr(snapshot, name).contiguous(), f"publish.{name}") for name in self.vectors
        ]
        self._meta[:] = (snapshot.stamp, snapshot.published, snapshot.period, snapshot.progress)
        self._header[0] = snapshot.stamp
        self._set_values(values)
        offset = self._slot_offset(snapshot.stamp)
        win = self._lock(self.rank)
        # readers must see the slot invalid before any of its vectors changes
        win.Put([self._invalid_stamp, MPI.BYTE], self.rank, target=(offset, 8, MPI.BYTE))
        win.Flush(self.rank)
        for index, payload in enumerate(payloads):
            target = (self._vector_offset(offset, index), self._payload_bytes, MPI.BYTE)
            win.Put([payload, MPI.BYTE], self.rank, target=target)
        win.Flush(self.rank)
        win.Put([self._meta, MPI.BYTE], self.rank, target=(offset, 8 * SLOT_META, MPI.BYTE))
        win.Flush(self.rank)
        win.Put([self._header, MPI.BYTE], self.rank, target=(0, self._header_bytes, MPI.BYTE))
        win.Unlock(self.rank)

    def set_flags(self, flags: int, values: np.ndarray | None = None) -> None:
        self._header[1] = float(int(self._header[1]) | flags)
        self._set_values(values)
        self._write_header()

    # -- reader side ----------------------------------------------------------------------------

    def read(self, source: int, lag: int = 0, newest: int | None = None) -> Read:
        """Snapshot ``max(0, n - lag)`` of ``source``, with ``n`` its latest stamp or ``newest`` if
        given (lock-step readers name the iteration, since a faster rank may be one ahead);
        clamped to what the ring still holds.

        The snapshot's tensors are this window's buffers for ``source``, reused (not reallocated:
        fresh pages cost more than the copy) and overwritten by the next read of ``source``:
        clone them to keep them longer. With host staging they are device copies of those buffers.
        """
        while True:
            read = self._read_once(source, lag, newest)
            if read is not None:
                return read

    def _read_once(self, source: int, lag: int, newest: int | None) -> Read | None:
        """One try at :meth:`read`; None when the owner rewrote the slot during the read."""
        win = self._lock(source)
        win.Get([self._read_header, MPI.BYTE], source, target=(0, self._header_bytes, MPI.BYTE))
        win.Flush(source)
        latest = int(self._read_header[0])
        snapshot = None
        if latest >= 0:
            base = latest if newest is None else min(newest, latest)
            stamp = max(0, base - lag, latest - self.slots + 1)
            offset = self._slot_offset(stamp)
            buffers = [
                self.staging.host_buffer(f"read.{source}.{name}", (self.numel,), self.dtype) for name in self.vectors
            ]
            win.Get([self._read_meta, MPI.BYTE], source, target=(offset, 8 * SLOT_META, MPI.BYTE))
            for index, buffer in enumerate(buffers):
                target = (self._vector_offset(offset, index), self._payload_bytes, MPI.BYTE)
                win.Get([buffer, MPI.BYTE], source, target=target)
            win.Flush(source)
            win.Get([self._check_stamp, MPI.BYTE], source, target=(offset, 8, MPI.BYTE))
        win.Unlock(source)
        if latest >= 0:
            slot_stamp, published, period, progress = self._read_meta.tolist()
            if not (int(slot_stamp) == int(self._check_stamp[0]) == stamp):
                return None  # the owner rewrote the slot meanwhile
            vectors = dict(zip(self.vectors, (self.staging.to_device(b) for b in buffers), strict=True))
            snapshot = Snapshot(stamp=stamp, published=published, period=period, progress=int(progress), **vectors)
        header = self._read_header
        return Read(snapshot, latest, int(header[1]), header[HEADER_FIXED:].copy())

    def header(self, source: int) -> tuple[int, int]:
        """``source``'s newest stamp and flags, without its snapshot."""
        win = self._lock(source)
        win.Get([self._read_header, MPI.BYTE], source, target=(0, self._header_bytes, MPI.BYTE))
        win.Unlock(source)
        return int(self._read_header[0]), int(self._read_header[1])

    def close(self) -> None:
        """Free the window (collective: every rank must call it)."""
        if self.win is not None:
            self.win.Free()
            self.win = None

    # -- internals ------------------------------------------------------------------------------

    def _open(self) -> MPI.Win:
        if self.win is None:
            raise RuntimeError("snapshot window used after close()")
        return self.win

    def _slot_offset(self, stamp: int) -> int:
        return self._header_bytes + (stamp % self.slots) * self.slot_bytes

    def _vector_offset(self, slot_offset: int, index: int) -> int:
        return slot_offset + 8 * SLOT_META + index * self._payload_bytes

    def _set_values(self, values: np.ndarray | None) -> None:
        if values is not None:
            self._header[HEADER_FIXED:] = values

    def _lock(self, target: int) -> MPI.Win:
        """The window, in an access epoch to ``target`` that takes no lock (see the module's doc)."""
        win = self._open()
        win.Lock(target, MPI.LOCK_SHARED, MPI.MODE_NOCHECK)
        return win

    def _write_header(self) -> None:
        win = self._lock(self.rank)
        win.Put([self._header, MPI.BYTE], self.rank, target=(0, self._header_bytes, MPI.BYTE))
        win.Unlock(self.rank)


class ControlWindow:
    """One int64 word per rank on rank 0: whether that rank has finished. Each rank writes only
    its own word, with a plain ``Put``, and readers ``Get`` them all: no atomics. (An atomic
    counter hung here: with osc/rdma over tcp, atomics on a target are serialised by a lock that a
    rank killed in the middle of one never releases.) Access epochs take no lock, as the snapshot
    windows'."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.rank, size = comm.Get_rank(), comm.Get_size()
        self.win: MPI.Win | None = MPI.Win.Allocate(8 * size if self.rank == 0 else 0, 8, comm=comm)
        self._words = np.zeros(size, dtype=np.int64)
        if self.rank == 0:
            self.win.Lock(0, MPI.LOCK_SHARED, MPI.MODE_NOCHECK)
            self.win.Put([self._words, MPI.INT64_T], 0)
            self.win.Unlock(0)
        comm.Barrier()
        self._one = np.ones(1, dtype=np.int64)

    def add_finished(self) -> None:
        """Say that this rank has finished."""
        self.win.Lock(0, MPI.LOCK_SHARED, MPI.MODE_NOCHECK)
        self.win.Put([self._one, MPI.INT64_T], 0, target=(self.rank, 1, MPI.INT64_T))
        self.win.Unlock(0)

    def finished(self) -> int:
        """How many ranks have said they finished."""
        self.win.Lock(0, MPI.LOCK_SHARED, MPI.MODE_NOCHECK)
        self.win.Get([self._words, MPI.INT64_T], 0)
        self.win.Unlock(0)
        return int(np.count_nonzero(self._words))

    def close(self) -> None:
        if self.win is not None:
            self.win.Free()
            self.win = None
