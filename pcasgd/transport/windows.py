"""MPI one-sided windows: each rank's versioned snapshots, and one control word for the run.

Layout of a :class:`SnapshotWindow` (bytes, all fields 8-byte aligned)::

    header  float64[5 + V]    latest stamp (-1: none yet), flags, the latest's publish time and
                              step period, when the owner paused (FLAG_PAUSED), then V values the
                              owner publishes
    slot 0  float64[4] stamp, publish time, step period, run progress; params[n], and grad[n]
            and displacement[n] where the window carries them (the predictors' g_j and d_j)
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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from pcasgd.algorithms.consensus import Snapshot
from pcasgd.errors import RingTooShortError, UsageError
from pcasgd.protocol.ages import Latest
from pcasgd.transport.staging import HostStaging

#: The header's fixed part (float64 each): the newest stamp, the flags, the newest snapshot's
#: publish time and step period, and when the owner paused. The values after it (integers stay
#: exact below 2**53) mean what the code that publishes them says.
HEADER_FIXED = 5

#: A slot's metadata (float64 each): stamp, publish time, step period, run progress.
SLOT_META = 4

#: How often a read waiting for its transfers enters MPI (seconds).
READ_POLL_SECONDS = 0.0001
FAILURE_CHECK_SECONDS = 0.01

FLAG_FINISHED = 1
FLAG_PAUSED = 2  # the owner has stopped training for a while (a record, an evaluation, a checkpoint)


@dataclass(frozen=True)
class Read:
    """A neighbour's snapshot (``None``: nothing published yet), and its header: newest stamp,
    flags and published values; ``latest``: the newest snapshot the read considered, from which
    the snapshot's age is counted (:func:`~pcasgd.protocol.ages.snapshot_age`)."""

    snapshot: Snapshot | None
    stamp: int
    flags: int
    values: np.ndarray
    latest: Latest | None = None


def header_bytes(values: int) -> int:
    return 8 * (HEADER_FIXED + values)


def window_bytes(numel: int, itemsize: int, slots: int, values: int = 0, vectors: int = 2) -> int:
    """Bytes of one rank's snapshot window: the header and ``slots`` slots of metadata and
    ``vectors`` model-sized vectors (parameters, gradient, and the displacement if carried)."""
    return header_bytes(values) + slots * (8 * SLOT_META + vectors * numel * itemsize)


def _fetch(
    win: MPI.Win,
    source: int,
    parts: list[tuple[np.ndarray | torch.Tensor, tuple[int, int, MPI.Datatype]]],
    interrupt: Callable[[], None] | None = None,
) -> None:
    """Get each ``(buffer, target)`` of ``parts`` from ``source`` and wait for all of them, entering
    MPI every ``READ_POLL_SECONDS`` rather than spinning in ``MPI_Win_flush``: a read across a slow
    link then leaves the core to the computation it overlaps (a flush busy-polls for the whole
    transfer, and on a host whose cores all compute that stole the time the overlap should hide).
    ``interrupt`` (``--fault-tolerant``): called every ``FAILURE_CHECK_SECONDS`` of the wait, to
    raise if a rank died: a read of a dead rank's window neither completes nor fails, and a read
    of a live rank that is busy agreeing on a death with the others (on another host) waited
    until the deadline ended the reader."""
    requests = [win.Rget([buffer, MPI.BYTE], source, target=target) for buffer, target in parts]
    checked = time.monotonic()
    while not MPI.Request.Testall(requests):
        time.sleep(READ_POLL_SECONDS)
        if interrupt is not None and time.monotonic() - checked > FAILURE_CHECK_SECONDS:
            checked = time.monotonic()
            interrupt()


#: ``--compression``'s dtypes for the snapshots in the windows.
WIRE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _mpi_buffer(tensor: torch.Tensor) -> np.ndarray | torch.Tensor:
    """What MPI reads or writes for ``tensor``: a NumPy view of a CPU tensor (passing the tensor
    itself goes through DLPack, which measured a third slower for a 4 MB Put), else the tensor."""
    if tensor.device.type != "cpu":
        return tensor
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()  # bytes: no bf16 in NumPy


class SnapshotWindow:
    """A ring of ``slots`` snapshots per rank (pcasgd.protocol.ring sizes it), and a header of
    ``values`` numbers the owner publishes with each snapshot; ``vectors``: what a snapshot
    carries (``params`` first, then any of ``grad`` and ``displacement``, in that order)."""

    def __init__(
        self,
        comm: MPI.Comm,
        numel: int,
        dtype: torch.dtype,
        slots: int,
        shared: bool = False,
        staging: HostStaging | None = None,
        values: int = 0,
        vectors: tuple[str, ...] = ("params", "grad"),
        interrupt: Callable[[], None] | None = None,
        wire: torch.dtype | None = None,
    ) -> None:
        self.comm = comm
        self._interrupt = interrupt  # called while a read waits (--fault-tolerant): see _fetch
        self.staging = staging if staging is not None else HostStaging(torch.device("cpu"), active=False)
        self.rank = comm.Get_rank()
        self.numel = numel
        self.dtype = dtype
        # ``wire``: the snapshots' dtype in the window (half precision: half the bytes per read);
        # published vectors are rounded to it, and reads come back as ``dtype``
        self.wire = dtype if wire is None else wire
        self._conversions: dict[str, torch.Tensor] = {}  # kept buffers of the roundings
        self.itemsize = torch.empty(0, dtype=self.wire).element_size()
        self.slots = slots
        if vectors[0] != "params" or not set(vectors) <= {"params", "grad", "displacement"}:
            raise ValueError(f"a snapshot window holds the parameters, then the gradient or displacement: {vectors}")
        self.vectors = vectors
        self._payload_bytes = numel * self.itemsize
        self.slot_bytes = 8 * SLOT_META + len(self.vectors) * self._payload_bytes
        self._header_bytes = header_bytes(values)
        size = window_bytes(numel, self.itemsize, slots, values, len(self.vectors))
        allocate = MPI.Win.Allocate_shared if shared else MPI.Win.Allocate
        self.win: MPI.Win | None = allocate(size, 1, comm=comm)
        self._header = np.zeros(HEADER_FIXED + values)
        self._header[0] = -1.0
        self._meta = np.zeros(SLOT_META)
        self._read_header = np.zeros(HEADER_FIXED + values)
        self._read_meta = np.zeros(SLOT_META)
        self._base_meta = np.zeros(SLOT_META)
        self._check_base = np.zeros(1)
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
        if any(getattr(snapshot, name) is None for name in self.vectors):
            raise ValueError(f"a snapshot published in this window carries {', '.join(self.vectors)}")
        payloads = [
            self.staging.to_host(self._on_wire(getattr(snapshot, name), name), f"publish.{name}")
            for name in self.vectors
        ]
        self._meta[:] = (snapshot.stamp, snapshot.published, snapshot.period, snapshot.progress)
        self._header[:3] = (snapshot.stamp, int(self._header[1]) & ~FLAG_PAUSED, snapshot.published)
        self._header[3] = snapshot.period
        self._set_values(values)
        offset = self._slot_offset(snapshot.stamp)
        win = self._lock(self.rank)
        # readers must see the slot invalid before any of its vectors changes
        win.Put([self._invalid_stamp, MPI.BYTE], self.rank, target=(offset, 8, MPI.BYTE))
        win.Flush(self.rank)
        for index, payload in enumerate(payloads):
            target = (self._vector_offset(offset, index), self._payload_bytes, MPI.BYTE)
            win.Put([_mpi_buffer(payload), MPI.BYTE], self.rank, target=target)
        win.Flush(self.rank)
        win.Put([self._meta, MPI.BYTE], self.rank, target=(offset, 8 * SLOT_META, MPI.BYTE))
        win.Flush(self.rank)
        win.Put([self._header, MPI.BYTE], self.rank, target=(0, self._header_bytes, MPI.BYTE))
        win.Unlock(self.rank)

    def set_flags(self, flags: int, values: np.ndarray | None = None) -> None:
        self._header[1] = float(int(self._header[1]) | flags)
        self._set_values(values)
        self._write_header()

    def pause(self, since: float) -> None:
        """Say that the owner stopped training at time ``since`` (its snapshot then ages by
        nothing); the next publish clears it."""
        self._header[4] = since
        self.set_flags(FLAG_PAUSED)

    # -- reader side ----------------------------------------------------------------------------

    def read(self, source: int, lag: int = 0, newest: int | None = None) -> Read:
        """Snapshot ``max(0, n - lag)`` of ``source``, with ``n`` its latest stamp or ``newest`` if
        given (lock-step readers name the iteration, since a faster rank may be one ahead);
        clamped to what the ring still holds, except that a named snapshot the ring no longer
        holds is an error (:class:`RingTooShortError`: the ring was sized too small).
        The read's ``latest`` is snapshot ``n`` (its publish time and period; paused only if it
        is the owner's newest).

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
        _fetch(win, source, [(self._read_header, (0, self._header_bytes, MPI.BYTE))], self._interrupt)
        header = self._read_header
        latest = int(header[0])
        snapshot = newest_seen = None
        if latest >= 0:
            base = latest if newest is None else min(newest, latest)
            stamp = max(0, base - lag, latest - self.slots + 1)
            if newest is not None and stamp > base - lag and base - lag >= 0:
                raise RingTooShortError(
                    f"rank {self.rank}: snapshot {base - lag} of rank {source} is no longer in its ring of "
                    f"{self.slots} slots (it has published {latest})"
                )
            offset = self._slot_offset(stamp)
            buffers = [
                self.staging.host_buffer(f"read.{source}.{name}", (self.numel,), self.wire) for name in self.vectors
            ]
            parts = [(self._read_meta, (offset, 8 * SLOT_META, MPI.BYTE))]
            if base != latest:  # the newest the reader considers is not the owner's: read its time
                parts.append((self._base_meta, (self._slot_offset(base), 8 * SLOT_META, MPI.BYTE)))
            for index, buffer in enumerate(buffers):
                target = (self._vector_offset(offset, index), self._payload_bytes, MPI.BYTE)
                parts.append((_mpi_buffer(buffer), target))
            _fetch(win, source, parts, self._interrupt)
            checks = [(self._check_stamp, (offset, 8, MPI.BYTE))]
            if base != latest:
                checks.append((self._check_base, (self._slot_offset(base), 8, MPI.BYTE)))
            _fetch(win, source, checks, self._interrupt)
        win.Unlock(source)
        if latest >= 0:
            slot_stamp, published, period, progress = self._read_meta.tolist()
            if not (int(slot_stamp) == int(self._check_stamp[0]) == stamp):
                return None  # the owner rewrote the slot meanwhile
            if base == latest:
                paused = header[4] if int(header[1]) & FLAG_PAUSED else None
                newest_seen = Latest(latest, float(header[2]), float(header[3]), paused)
            else:
                base_stamp, base_published, base_period, _ = self._base_meta.tolist()
                if not (int(base_stamp) == int(self._check_base[0]) == base):
                    return None
                newest_seen = Latest(base, base_published, base_period)
            read_back = [self._off_wire(self.staging.to_device(b), f"{source}.{i}") for i, b in enumerate(buffers)]
            vectors = dict(zip(self.vectors, read_back, strict=True))
            vectors.setdefault("grad", None)
            snapshot = Snapshot(stamp=stamp, published=published, period=period, progress=int(progress), **vectors)
        return Read(snapshot, latest, int(header[1]), header[HEADER_FIXED:].copy(), newest_seen)

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

    def _on_wire(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """``tensor`` as the window holds it (rounded into a kept buffer when compressed)."""
        if self.wire == self.dtype:
            return tensor.contiguous()
        return self._kept(f"wire.{name}", self.wire, tensor.device).copy_(tensor.reshape(-1))

    def _off_wire(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        """A read vector in ``dtype`` (a kept buffer per source and vector when compressed)."""
        if self.wire == self.dtype:
            return tensor
        return self._kept(f"full.{key}", self.dtype, tensor.device).copy_(tensor)

    def _kept(self, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buffer = self._conversions.get(key)
        if buffer is None or buffer.device != device:
            buffer = self._conversions[key] = torch.empty(self.numel, dtype=dtype, device=device)
        return buffer

    def _open(self) -> MPI.Win:
        if self.win is None:
            raise UsageError("snapshot window used after close()")
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
    """One int64 word per rank, in every rank's window: whether that rank has finished. A rank
    that finishes ``Put``s its word into the window of every rank alive, and each rank reads its
    own window: no rank holds the only copy, so a run outlives any rank's death (rank 0's too),
    and the check each iteration makes is local. No atomics (an atomic counter hung: with
    osc/rdma over tcp, atomics on a target are serialised by a lock that a rank killed in the
    middle of one never releases). Access epochs take no lock, as the snapshot windows'."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.rank, size = comm.Get_rank(), comm.Get_size()
        self.win: MPI.Win | None = MPI.Win.Allocate(8 * size, 8, comm=comm)
        if self.win.Get_attr(MPI.WIN_MODEL) != MPI.WIN_UNIFIED:
            raise UsageError("the end-of-run words need a window of MPI's unified memory model")
        # this rank's own words, read in place: an RMA call on this rank's own window, after a
        # rank had died on another host, waited until the deadline ended the rank (osc/rdma)
        self._words = np.frombuffer(self.win.tomemory(), dtype=np.int64)
        self._words[:] = 0
        comm.Barrier()
        self._one = np.ones(1, dtype=np.int64)

    def add_finished(self, ranks: Sequence[int]) -> None:
        """Say that this rank has finished, in the windows of ``ranks`` (those alive)."""
        for rank in ranks:
            self.win.Lock(rank, MPI.LOCK_SHARED, MPI.MODE_NOCHECK)
            self.win.Put([self._one, MPI.INT64_T], rank, target=(self.rank, 1, MPI.INT64_T))
            self.win.Unlock(rank)

    def finished(self) -> int:
        """How many ranks have said they finished (in this rank's window: the others' Puts)."""
        return int(np.count_nonzero(self._words))

    def close(self) -> None:
        if self.win is not None:
            self.win.Free()
            self.win = None
