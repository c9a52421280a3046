"""One rank's side of the decentralized weight exchange: publish, then read the neighbours.

Used by the MPI training loop and by :class:`pcasgd.DecentralizedOptimizer`, so both wait,
detect stalls, overlap and handle NaN snapshots the same way.

An iteration's exchange is :meth:`NeighbourExchange.start` (publish, and start the reads) and
:meth:`NeighbourExchange.finish` (complete them; the reads the mix takes). Blocking, the reads are
made in ``start``, after the gradient. With ``--overlap`` (ALGORITHMS.md, "Revision 2") the
caller starts before it computes the gradient, publishing its previous one, and the reads fly on
a :class:`~pcasgd.transport.jobs.JobThread` while it computes.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from mpi4py import MPI
from torch import Tensor

from pcasgd import log
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import Snapshot
from pcasgd.delays import DelayModel
from pcasgd.errors import NeighbourFinishedError, StallError, UsageError
from pcasgd.protocol.ages import Latest, StepPeriod
from pcasgd.protocol.reads import Fetched, Reads, assemble_reads, fetch_reads
from pcasgd.protocol.ring import ring_slots
from pcasgd.runtime.faults import notice_failures
from pcasgd.topology import Schedule, Topology
from pcasgd.transport.clock import RunClock, offset_to_root
from pcasgd.transport.deadline import Deadline
from pcasgd.transport.jobs import JobThread, require_thread_multiple
from pcasgd.transport.progress import MpiProgress
from pcasgd.transport.staging import HostStaging
from pcasgd.transport.windows import FLAG_FINISHED, WIRE_DTYPES, SnapshotWindow

LOG = log.get("exchange")


@dataclass(frozen=True)
class MpiOptions:
    """How a rank's exchange runs: lock-step, shared-memory windows, a progress thread, and
    host staging of GPU buffers."""

    deterministic: bool = False
    shared_windows: bool = False  # MPI.Win.Allocate_shared (one node only)
    progress_thread: bool = False  # a helper thread keeps one-sided transfers moving during compute
    staging: HostStaging | None = None  # GPU ranks: host copies of what the windows hold (None: CPU)
    fault_tolerant: bool = False  # ULFM: a dead rank is survived (pcasgd.runtime.faults)
    replacement: tuple[str, ...] | None = None  # --rejoin: the command that starts a replacement (rejoin.py)


class NeighbourExchange:
    """Publishes this rank's snapshot and returns its in-neighbours' reads for the mix.

    ``dsgd`` (synchronous) waits, neighbour by neighbour, for a snapshot stamped with the
    current iteration; the others take the newest (``lag`` older when a delay spec injects
    one). ``deterministic`` adds a lock-step reduction after each publish (which also counts the
    ranks still stepping, for :meth:`pcasgd.DecentralizedOptimizer.join`; with overlap, after the
    reads complete) and reads stamp ``k - lag`` exactly (``k - 1 - lag`` with overlap, as
    ``dsgd`` waits for ``k - 1``). Snapshots are stamped with ``clock``'s time and this rank's step period
    (the mean of its last intervals between publishes; one unit per iteration in lock-step), and
    with the run's progress as this rank knows it (the largest iteration count it has seen). A
    neighbour whose newest stamp does not move for ``deadline`` seconds, and has not finished,
    raises :class:`~pcasgd.errors.StallError`; a snapshot with NaN/Inf is left out and its weight
    goes to this rank. A finished neighbour ends a ``dsgd`` run (:class:`NeighbourFinishedError`),
    unless ``final_snapshots``: then its last snapshot is mixed from then on (a rank that joined
    with less data). ``fault_tolerant``: a wait for a neighbour also watches for failed processes
    (:func:`~pcasgd.runtime.faults.notice_failures`), and after a failure :meth:`enter` moves the
    exchange onto the survivors' communicator and graph while the windows stay where they are.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        window: SnapshotWindow,
        schedule: Schedule,
        delays: DelayModel,
        config: AlgorithmConfig,
        deadline: Deadline,
        deterministic: bool,
        clock: RunClock,
        final_snapshots: bool = False,
        fault_tolerant: bool = False,
    ) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        # The window rank of each rank of ``comm``: its rank in the world the windows were made in.
        self.owners = list(range(comm.Get_size()))
        self.window = window
        self.fault_tolerant = fault_tolerant
        self.schedule = schedule
        self.delays = delays
        self.config = config
        self.deadline = deadline
        self.deterministic = deterministic
        self.final_snapshots = final_snapshots
        self.clock = clock
        self.period = StepPeriod()
        self.progress = 0  # the largest iteration count of any rank this rank has heard of
        self.overlap = config.overlap
        if self.overlap:
            require_thread_multiple("--overlap")
        self._reader = JobThread("pcasgd-reads") if self.overlap else None
        self._pending: tuple[int, Topology, Future] | None = None  # reads started, not yet finished
        # the first snapshot this rank published here: exact overlapped reads name k - 1 only after
        # it (before, the neighbours have no k - 1 in their windows: a fresh start or the API resumed)
        self.first_stamp: int | None = None
        self._reads_done = 0  # completed window reads: the overlapped reads' heartbeat
        self._paused = 0.0  # seconds of pauses (records, evaluations) since the last publish
        self._last_publish = clock.now(0)
        self._stepping = np.ones(1, dtype=np.int64)
        self._still_stepping = np.zeros(1, dtype=np.int64)
        self._last_seen: dict[int, tuple[int, float]] = {}  # per window rank
        self.poisoned: Counter[int] = Counter()  # per window rank

    def enter(self, comm: MPI.Comm, schedule: Schedule, owners: list[int]) -> None:
        """Go on over ``comm`` (the survivors of a failure) and its graph ``schedule``; ``owners``
        gives each rank of ``comm`` its window rank. The windows are not rebuilt: a process that
        died while the survivors created windows crashed them inside Open MPI 5.0.11 (docs/mpi.md)."""
        self.settle()
        self.comm, self.rank, self.schedule, self.owners = comm, comm.Get_rank(), schedule, list(owners)

    @property
    def pending(self) -> bool:
        """Whether reads were started and not finished."""
        return self._pending is not None

    def start(
        self,
        k: int,
        params: Tensor,
        grad: Tensor,
        values: np.ndarray | None = None,
        displacement: Tensor | None = None,
    ) -> None:
        """Publish ``(params, grad, k)`` (with ``displacement``, and ``values`` in the window
        header) and start iteration ``k``'s reads: on the reader thread with overlap, here
        otherwise."""
        self.publish(k, params, grad, values, displacement)
        if self.deterministic and not self.overlap:
            self.lock_step(k, stepping=True)
        topology = self.schedule.at(k)
        read = partial(self._read, k=k)
        fetch = partial(fetch_reads, self.rank, k, topology, self.config, self.delays, read)
        if self._reader is not None:
            future = self._reader.submit(fetch)
        else:
            future = Future()
            future.set_result(fetch())
        self._pending = (k, topology, future)

    def finish(self) -> Reads:
        """Complete the reads :meth:`start` began; return the reads to mix, this rank's own weight
        and the run's progress. Their ages are taken now, when they are used."""
        if self._pending is None:
            raise UsageError("NeighbourExchange.finish() without start()")
        k, topology, future = self._pending
        self._pending = None
        fetched = self._completed(future, f"the reads of iteration {k} from the neighbours' windows")
        if self.deterministic and self.overlap:
            self.lock_step(k, stepping=True)
        gathered = assemble_reads(self.rank, k, topology, fetched, self.clock.now(k), self.period.period)
        for j, stamp in gathered.left_out:
            self._report_poisoned(self.owners[j], stamp, k)
        self.progress = max(self.progress, gathered.progress)
        return replace(gathered, progress=self.progress)

    def settle(self) -> None:
        """Let reads in flight end, and drop them (a failure interrupted the iteration, or this rank
        joins): what they raise no longer matters."""
        if self._pending is not None:
            future = self._pending[2]
            self._pending = None
            with suppress(Exception):  # the iteration they served is abandoned
                self._completed(future, "the reads in flight before a recovery or a join")

    def _completed(self, future: Future, what: str) -> list[Fetched]:
        """The reads of ``future``, waited for under the deadline, which starts again at each read
        the reader thread completes (a dsgd wait for a slow neighbour is watched by the stall
        check, window by window)."""
        while not future.done():
            seen = self._reads_done
            with self.deadline.guard(f"waiting for {what}"):
                while not future.done() and self._reads_done == seen:
                    wait_for_futures([future], timeout=0.001)
        return future.result()

    def close(self) -> None:
        """Stop the reader thread (if any)."""
        if self._reader is not None:
            self.settle()
            self._reader.close()
            self._reader = None

    def pause(self) -> AbstractContextManager[None]:
        """This rank stops training for a while (a record, an evaluation, a checkpoint): its
        header says so, its snapshot ages by nothing meanwhile, and the time is not counted in
        its step period."""
        return _Pause(self)

    def publish(
        self,
        k: int,
        params: Tensor,
        grad: Tensor,
        values: np.ndarray | None = None,
        displacement: Tensor | None = None,
    ) -> None:
        """Publish snapshot ``k``, stamped with the time, this rank's step period and progress."""
        now = self.clock.now(k)
        self.period.add(1.0 if self.deterministic else now - self._last_publish - self._paused)
        self._last_publish, self._paused = now, 0.0
        self.progress = max(self.progress, k)
        if self.first_stamp is None:
            self.first_stamp = k
        snapshot = Snapshot(params, grad, k, now, self.period.period, self.progress, displacement)
        with self.deadline.guard(f"publishing snapshot {k}"):
            self.window.publish(snapshot, values)

    def _read(self, j: int, lag: int, k: int) -> tuple[Snapshot, Latest]:
        """Neighbour ``j``'s snapshot for iteration ``k``. Lock-step and waiting (``dsgd``) readers
        name the iteration (``k - 1`` with overlap): a neighbour ahead has also published later
        ones, and ``dsgd`` mixes exactly ``x_j^k`` (the ring keeps them all: ring.py)."""
        must_wait = self.config.synchronous and not self.deterministic
        exact = self.deterministic or must_wait
        wanted = k - 1 if self.overlap and k > self.first_stamp else k
        owner = self.owners[j]
        guard = self.deadline.guard if self._reader is None else _unguarded  # the waiting thread guards
        while True:
            with guard(f"reading rank {owner}'s window"):
                read = self.window.read(owner, lag, newest=wanted if exact else None)
            self._reads_done += 1
            self._check_alive(owner, read.stamp, read.flags)
            if read.snapshot is not None and not (must_wait and read.snapshot.stamp < wanted):
                return read.snapshot, read.latest
            if must_wait and read.flags & FLAG_FINISHED:
                if self.final_snapshots and read.snapshot is not None:
                    return read.snapshot, read.latest
                raise NeighbourFinishedError(f"rank {owner} ended its run before publishing iteration {wanted}")
            if self.fault_tolerant:  # the neighbour waited for may be the one that died
                notice_failures(self.comm)
            time.sleep(0.0002)

    def lock_step(self, k: int, stepping: bool) -> int:
        """The lock-step point of iteration ``k`` (every rank passes it together); returns how
        many ranks are still stepping (a rank that has joined passes it with ``stepping=False``)."""
        self._stepping[0] = int(stepping)
        request = self.comm.Iallreduce(self._stepping, self._still_stepping, op=MPI.SUM)
        self.deadline.wait(request, f"the lock-step barrier of iteration {k}")
        return int(self._still_stepping[0])

    def watch_neighbours(self, k: int) -> None:
        """Raise :class:`~pcasgd.errors.StallError` if an in-neighbour of iteration ``k`` that has not
        finished has published nothing new for ``deadline`` seconds (while this rank waits for the
        others to join)."""
        for j in self.schedule.at(k).in_neighbours(self.rank):
            self._check_alive(self.owners[j], *self.window.header(self.owners[j]))

    def _check_alive(self, j: int, stamp: int, flags: int) -> None:
        """A neighbour (window rank ``j``) whose newest stamp has not moved for ``deadline`` seconds
        has stalled."""
        now = time.monotonic()
        last_stamp, since = self._last_seen.get(j, (None, now))
        if stamp != last_stamp:
            self._last_seen[j] = (stamp, now)
            return
        finished = flags & FLAG_FINISHED
        if not finished and now - since > self.deadline.seconds:
            raise StallError(
                f"rank {self.window.rank}: neighbour rank {j} published nothing new for {now - since:.1f} s "
                f"(last stamp {stamp}); it died, stalled, or is slower than the deadline allows"
            )

    def _report_poisoned(self, j: int, stamp: int, k: int) -> None:
        self.poisoned[j] += 1
        if self.poisoned[j] == 1:
            LOG.warning(
                f"rank {self.window.rank}: rank {j}'s snapshot {stamp} holds NaN/Inf at iteration {k}; it is left "
                "out of the mix (its weight goes to this rank) until it is finite again"
            )


def _unguarded(what: str) -> AbstractContextManager[None]:
    return nullcontext()


class _Pause:
    """:meth:`NeighbourExchange.pause`'s context."""

    def __init__(self, exchange: NeighbourExchange) -> None:
        self.exchange = exchange
        self.since = 0.0

    def __enter__(self) -> None:
        exchange = self.exchange
        self.since = exchange.clock.now(0)
        if not exchange.deterministic:
            exchange.window.pause(self.since)

    def __exit__(self, *exc: object) -> None:
        exchange = self.exchange
        exchange._paused += exchange.clock.now(0) - self.since


class ExchangeEndpoint:
    """This rank's side of the decentralized exchange: its snapshot window (a ring of slots sized
    by :func:`~pcasgd.protocol.ring.ring_slots`, staged through pinned host memory where MPI
    cannot read the device),
    the progress helper and the :class:`NeighbourExchange`; ``header_values`` numbers ride in the
    window's header with each snapshot; ``final_snapshots`` as for :class:`NeighbourExchange`.
    ``pcasgd train --backend mpi`` and
    :class:`pcasgd.DecentralizedOptimizer` build it the same way. Collective."""

    def _notice_failures(self) -> None:
        """Raise if a rank of the world the exchange reads in now died (it changes with recoveries)."""
        notice_failures(self.exchange.comm)

    def __init__(
        self,
        comm: MPI.Comm,
        params: Tensor,
        schedule: Schedule,
        delays: DelayModel,
        config: AlgorithmConfig,
        options: MpiOptions,
        deadline: Deadline,
        header_values: int = 0,
        final_snapshots: bool = False,
    ) -> None:
        with deadline.guard("allocating the snapshot windows (collective)"):
            slots = ring_slots(config, delays, schedule, options.deterministic)
            self.window = SnapshotWindow(
                comm,
                params.numel(),
                params.dtype,
                slots,
                options.shared_windows,
                options.staging,
                header_values,
                config.snapshot_vectors,
                self._notice_failures if options.fault_tolerant else None,
                WIRE_DTYPES.get(config.compression),
            )
        offset = 0.0 if options.deterministic else offset_to_root(comm, deadline)
        self.progress = MpiProgress(comm, thread=options.progress_thread)
        self.exchange = NeighbourExchange(
            comm,
            self.window,
            schedule,
            delays,
            config,
            deadline,
            options.deterministic,
            RunClock(options.deterministic, offset),
            final_snapshots,
            options.fault_tolerant,
        )
