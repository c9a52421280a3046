"""One rank's side of the decentralized weight exchange: publish, then read the neighbours.

Used by the MPI training loop and by :class:`pcasgd.DecentralizedOptimizer`, so both wait,
detect stalls and handle NaN snapshots the same way.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from mpi4py import MPI
from torch import Tensor

from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import Snapshot
from pcasgd.delays import DelayModel
from pcasgd.errors import StallError
from pcasgd.protocol.ages import StepPeriod
from pcasgd.protocol.reads import Reads, gather_reads
from pcasgd.runtime.faults import notice_failures
from pcasgd.topology import Schedule
from pcasgd.transport.clock import RunClock, offset_to_root
from pcasgd.transport.deadline import Deadline
from pcasgd.transport.progress import MpiProgress
from pcasgd.transport.staging import HostStaging
from pcasgd.transport.windows import FLAG_FINISHED, SnapshotWindow


@dataclass(frozen=True)
class MpiOptions:
    """How a rank's exchange runs: lock-step, shared-memory windows, a progress thread, and
    host staging of GPU buffers."""

    deterministic: bool = False
    shared_windows: bool = False  # MPI.Win.Allocate_shared (one node only)
    progress_thread: bool = False  # a helper thread keeps one-sided transfers moving during compute
    staging: HostStaging | None = None  # GPU ranks: host copies of what the windows hold (None: CPU)
    fault_tolerant: bool = False  # ULFM: a dead rank is survived (pcasgd.runtime.faults)


class NeighbourFinishedError(Exception):
    """``dsgd``, asynchronous: a neighbour this rank waits for has ended its run and will publish
    nothing more. The run is over (a rank finished its iterations), so this rank ends it too."""


class NeighbourExchange:
    """Publishes this rank's snapshot and returns its in-neighbours' reads for the mix.

    ``dsgd`` (synchronous) waits, neighbour by neighbour, for a snapshot stamped with the
    current iteration; the others take the newest (``lag`` older when a delay spec injects
    one). ``deterministic`` adds a lock-step reduction after each publish (which also counts the
    ranks still stepping, for :meth:`pcasgd.DecentralizedOptimizer.join`) and reads stamp
    ``k - lag`` exactly. Snapshots are stamped with ``clock``'s time and this rank's step period
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
        self._last_publish = clock.now(0)
        self._stepping = np.ones(1, dtype=np.int64)
        self._still_stepping = np.zeros(1, dtype=np.int64)
        self._last_seen: dict[int, tuple[int, float]] = {}  # per window rank
        self.poisoned: Counter[int] = Counter()  # per window rank

    def enter(self, comm: MPI.Comm, schedule: Schedule, owners: list[int]) -> None:
        """Go on over ``comm`` (the survivors of a failure) and its graph ``schedule``; ``owners``
        gives each rank of ``comm`` its window rank. The windows are not rebuilt: a process that
        died while the survivors created windows crashed them inside Open MPI 5.0.11 (docs/mpi.md)."""
        self.comm, self.rank, self.schedule, self.owners = comm, comm.Get_rank(), schedule, list(owners)

    def exchange(
        self,
        k: int,
        params: Tensor,
        grad: Tensor,
        values: np.ndarray | None = None,
        displacement: Tensor | None = None,
    ) -> Reads:
        """Publish ``(params, grad, k)`` (with ``displacement``, and ``values`` in the window
        header); return the reads to mix, this rank's own weight and the run's progress."""
        self.publish(k, params, grad, values, displacement)
        if self.deterministic:
            self.lock_step(k, stepping=True)
        topology = self.schedule.at(k)
        read = partial(self._read, k=k)
        gathered = gather_reads(
            self.rank, k, topology, self.config, self.delays, read, self.clock.now(k), self.period.period
        )
        for j, stamp in gathered.left_out:
            self._report_poisoned(self.owners[j], stamp, k)
        self.progress = max(self.progress, gathered.progress)
        return replace(gathered, progress=self.progress)

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
        self.period.add(1.0 if self.deterministic else now - self._last_publish)
        self._last_publish = now
        self.progress = max(self.progress, k)
        snapshot = Snapshot(params, grad, k, now, self.period.period, self.progress, displacement)
        with self.deadline.guard(f"publishing snapshot {k}"):
            self.window.publish(snapshot, values)

    def _read(self, j: int, lag: int, k: int) -> Snapshot:
        """Neighbour ``j``'s snapshot for iteration ``k``. Lock-step and waiting (``dsgd``) readers
        name the iteration: a neighbour one step ahead has also published ``k + 1``, and ``dsgd``
        mixes exactly ``x_j^k`` (the ring keeps both)."""
        must_wait = self.config.synchronous and not self.deterministic
        exact = self.deterministic or must_wait
        owner = self.owners[j]
        while True:
            with self.deadline.guard(f"reading rank {owner}'s window"):
                read = self.window.read(owner, lag, newest=k if exact else None)
            self._check_alive(owner, read.stamp, read.flags)
            if read.snapshot is not None and not (must_wait and read.snapshot.stamp < k):
                return read.snapshot
            if must_wait and read.flags & FLAG_FINISHED:
                if self.final_snapshots and read.snapshot is not None:
                    return read.snapshot
                raise NeighbourFinishedError(f"rank {owner} ended its run before publishing iteration {k}")
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
            print(
                f"pcasgd: warning: rank {self.window.rank}: rank {j}'s snapshot {stamp} holds NaN/Inf at iteration "
                f"{k}; it is left out of the mix (its weight goes to this rank) until it is finite again",
                file=sys.stderr,
                flush=True,
            )


class ExchangeEndpoint:
    """This rank's side of the decentralized exchange: its snapshot window (a ring of
    ``max_lag + 2`` slots, staged through pinned host memory where MPI cannot read the device),
    the progress helper and the :class:`NeighbourExchange`; ``header_values`` numbers ride in the
    window's header with each snapshot; ``final_snapshots`` as for :class:`NeighbourExchange`.
    ``pcasgd train --backend mpi`` and
    :class:`pcasgd.DecentralizedOptimizer` build it the same way. Collective."""

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
            slots = delays.max_lag + 2
            self.window = SnapshotWindow(
                comm,
                params.numel(),
                params.dtype,
                slots,
                options.shared_windows,
                options.staging,
                header_values,
                config.publishes_displacement,
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
