"""The parameter-server modes on MPI (ps-asgd, dcasgd-c, dcasgd-a, sasgd): rank 0 serves.

Workers (ranks 1..N) loop: receive weights from rank 0 (or a stop message), compute the
gradient of their next mini-batch there, send it back with its loss and batch size. Rank 0
holds the same :class:`~pcasgd.algorithms.server.ParameterServer` as the simulator.

* **deterministic**: rank 0 runs the protocol on simulated time, as the simulator does
  (:func:`~pcasgd.protocol.server.serve_in_simulated_time`); a pull sends the weights to
  the worker and the engine's gradient oracle receives that worker's gradient. The order of
  events, the lags and hardsync waiting are the simulator's, so the weights are too.
* **asynchronous** (default): rank 0 takes gradients in the order they arrive, measures their
  staleness, answers each worker with fresh weights (``lag`` versions old if a delay spec
  injects one; hardsync sasgd answers when the update is applied). The run ends when the first
  worker has done ``epochs`` epochs of iterations: every worker's next push is answered with stop.
  A ``straggler`` term makes a worker sleep ``(f - 1)`` times its gradient time.

``fault_tolerant`` (asynchronous mode, under ULFM: :mod:`pcasgd.runtime.faults`): a worker's
death is noticed where rank 0 waits for any gradient (a receive from any source fails while a
failure is unacknowledged); rank 0 acknowledges it, forgets the dead workers (their shards are
dropped; sasgd's ``c`` counts the workers left) and serves the others on. At the end the
survivors agree on who is left (``MPI_Comm_shrink``) instead of a barrier that would wait for the
dead. The server's own death ends the run: every worker stops with a message naming it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from mpi4py import MPI
from torch import Tensor

from pcasgd.engine import EngineResult, EngineRun, EpochStats
from pcasgd.errors import ProcessFailedError, TrainingFailedError
from pcasgd.protocol.pacing import StragglerPacing
from pcasgd.protocol.server import VersionedServer, serve_in_simulated_time
from pcasgd.runtime.faults import abandon, is_process_failure
from pcasgd.runtime.recording import RankState, Recorder
from pcasgd.runtime.recovery import Recovery
from pcasgd.transport.deadline import POLL_SECONDS, Deadline
from pcasgd.transport.progress import MpiProgress

# What an asynchronous server's checkpoint holds (its workers' data positions are in their own).
CHECKPOINTED = ("served", "samples", "staleness")
TAG_WEIGHTS, TAG_STOP, TAG_GRAD, TAG_META, TAG_CHECKPOINT = 11, 12, 13, 14, 15


class _Link:
    """Point-to-point messages between the server and the workers, every wait under the deadline."""

    def __init__(self, comm: MPI.Comm, deadline: Deadline, params: Tensor) -> None:
        self.comm = comm
        self.deadline = deadline
        self.numel = params.numel()
        self.dtype = params.dtype
        self.device = params.device  # messages travel through host memory; tensors come back to it
        self._sends: list[tuple[MPI.Request, np.ndarray]] = []  # each buffer lives until its send completes

    def send_weights(self, rank: int, weights: Tensor) -> None:
        self._send(weights.detach().cpu().numpy().copy(), rank, TAG_WEIGHTS)

    def send_stop(self, rank: int, after_failures: bool = False) -> None:
        """The run is over; ``after_failures``: workers died, so the survivors end by agreeing
        on who is left (:func:`_end`)."""
        self._send(np.array([after_failures], dtype=np.int64), rank, TAG_STOP)

    def send_checkpoint(self, rank: int, epoch: int) -> None:
        """Tell a worker to checkpoint itself (its data position) when it next waits for weights."""
        self._send(np.array([epoch], dtype=np.int64), rank, TAG_CHECKPOINT)

    def _send(self, buffer: np.ndarray, rank: int, tag: int) -> None:
        self._sends = [(request, kept) for request, kept in self._sends if not self._completed(request)]
        self._sends.append((self.comm.Isend(buffer, dest=rank, tag=tag), buffer))

    @staticmethod
    def _completed(request: MPI.Request) -> bool:
        """Whether a send is done; one to a dead worker (--fault-tolerant) is done too: its death
        is noticed where the server waits for gradients."""
        try:
            return request.Test()
        except MPI.Exception as error:
            if not is_process_failure(error):
                raise
            return True

    def receive_gradient(self, rank: int) -> tuple[Tensor, float, int]:
        meta = np.zeros(2)
        grad = torch.empty(self.numel, dtype=self.dtype)
        self.deadline.wait(self.comm.Irecv(meta, source=rank, tag=TAG_META), f"waiting for rank {rank}'s gradient")
        self.deadline.wait(
            self.comm.Irecv(grad.numpy(), source=rank, tag=TAG_GRAD), f"receiving rank {rank}'s gradient"
        )
        return grad.to(self.device), float(meta[0]), int(meta[1])

    def next_sender(self, what: str) -> int:
        """The rank of the next gradient to arrive, whoever sends it."""
        status = MPI.Status()
        with self.deadline.guard(what):
            while not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_META, status=status):
                time.sleep(POLL_SECONDS)
        return status.Get_source()

    def flush(self) -> None:
        with self.deadline.guard("sending to the workers"):
            while not all(self._completed(request) for request, _ in self._sends):
                time.sleep(POLL_SECONDS)
        self._sends = []


class RemoteGradients:
    """The simulator engine's gradient oracle, answered by the worker ranks.

    ``received``: gradients already taken in from workers (at a checkpoint) but not yet used.
    """

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.samples = 0
        self.outstanding: set[int] = set()
        self.received: dict[int, tuple[Tensor, float, int]] = {}

    def pulled(self, worker: int, weights: Tensor) -> None:
        self.link.send_weights(worker + 1, weights)
        self.outstanding.add(worker)

    def __call__(self, worker: int, params: Tensor) -> tuple[Tensor, float]:
        if worker in self.received:
            grad, loss, samples = self.received.pop(worker)
        else:
            grad, loss, samples = self.link.receive_gradient(worker + 1)
        self.outstanding.discard(worker)
        self.samples += samples
        return grad, loss

    def take_in_outstanding(self) -> None:
        """Receive every gradient asked for and not yet in: the workers are then between gradients."""
        for worker in sorted(self.outstanding - set(self.received)):
            self.received[worker] = self.link.receive_gradient(worker + 1)


def _serve_deterministic(comm: MPI.Comm, run: EngineRun, link: _Link) -> EngineResult:
    """The simulator's engine on rank 0. A checkpoint first takes in the gradients the workers owe
    (so each worker checkpoints between gradients) and keeps them with the engine's state."""
    remote = RemoteGradients(link)
    engine_state = None
    if run.resume is not None:
        engine_state = run.resume["engine"]
        remote.received, remote.outstanding = run.resume["received"], set(run.resume["received"])
        remote.samples = run.resume["samples"]

    def checkpoint(epoch: int, state: dict) -> None:
        remote.take_in_outstanding()
        for rank in range(1, comm.Get_size()):
            link.send_checkpoint(rank, epoch)
        run.checkpoint(epoch, {"engine": state, "received": dict(remote.received), "samples": remote.samples})

    local_run = EngineRun(
        run.config,
        run.delays,
        remote,
        run.initial_params,
        run.iterations_per_epoch,
        run.epochs,
        run.hook,
        checkpoint if run.checkpoint is not None else None,
        engine_state,
        run.record_every,
    )
    result = serve_in_simulated_time(local_run, comm.Get_size() - 1, on_pull=remote.pulled)
    for worker in sorted(remote.outstanding - set(remote.received)):  # asked for after the budget: not applied
        link.receive_gradient(worker + 1)
    for rank in range(1, comm.Get_size()):
        link.send_stop(rank)
    link.flush()
    return result


class _AsynchronousServer:
    def __init__(
        self, comm: MPI.Comm, run: EngineRun, link: _Link, deadline: Deadline, recovery: Recovery | None
    ) -> None:
        self.comm = comm
        self.run = run
        self.link = link
        self.fault_tolerant = recovery is not None
        self.workers = comm.Get_size() - 1
        self.live = list(range(self.workers))  # the workers alive (all but under --fault-tolerant)
        self.recovery = recovery or Recovery(0, comm.Get_size(), run.world_change)
        self.served = VersionedServer(run.config, run.delays, run.initial_params, self.workers)
        self.recorder = Recorder(comm, run, deadline)
        self.samples = 0
        self.stats = EpochStats()
        self.staleness: Counter[int] = Counter()
        self.records = run.records()
        if run.resume is not None:  # the workers pull afresh: gradients in flight at the checkpoint are lost
            for name in CHECKPOINTED:
                setattr(self, name, run.resume[name])
            self.served.waiting = []
            self.records.skip_to(max(self.served.done))

    def _checkpoint(self, epoch: int) -> None:
        for worker in self.live:
            self.link.send_checkpoint(worker + 1, epoch)
        self.run.checkpoint(epoch, {name: getattr(self, name) for name in CHECKPOINTED})

    def pull(self, worker: int) -> None:
        self.link.send_weights(worker + 1, self.served.pull(worker))

    def serve(self) -> EngineResult:
        run, served = self.run, self.served
        budget = run.epochs * run.iterations_per_epoch
        for worker in range(self.workers):
            self.pull(worker)
        stopped: set[int] = set()
        while len(stopped) < len(self.live):
            try:
                worker = self.link.next_sender("waiting for any worker's gradient") - 1
                grad, loss, samples = self.link.receive_gradient(worker + 1)
            except (ProcessFailedError, MPI.Exception) as error:
                if not (self.fault_tolerant and is_process_failure(error, self.comm)):
                    raise
                for other in self._remove_dead_workers():
                    self.pull(other)
                stopped &= set(self.live)
                continue
            self.recovery.stepped()  # a gradient taken in: the server's step
            self.samples += samples
            self.stats.add_loss(loss)
            report, answer = served.push(worker, grad, max(served.done) / run.iterations_per_epoch)
            self.stats.add_staleness([report.staleness])
            self.staleness[report.staleness] += 1
            finishing = max(served.done) >= budget
            if finishing:
                answer += served.release_all()
            for other in answer:
                if finishing:
                    self.link.send_stop(other + 1, after_failures=bool(self.recovery.events))
                    stopped.add(other)
                else:
                    self.pull(other)
            for epoch, is_epoch in self.records.due(max(served.done)):
                self.recorder.fire(epoch, self._states(), served.params)
                self.stats = EpochStats()
                if is_epoch and run.checkpoint is not None:
                    self._checkpoint(int(epoch))
        self.link.flush()
        self.recovery.ended()
        result = self.recorder.result(self._states(), served.params)
        return replace(result, world_changes=self.recovery.events)

    def _remove_dead_workers(self) -> list[int]:
        """Acknowledge the failed processes, forget the workers among them; return the workers to
        answer now (hardsync sasgd: those the dead one kept waiting)."""
        noticed = time.time()
        failed = self.comm.Get_failed()
        dead_ranks = failed.Translate_ranks(None, self.comm.Get_group())
        self.comm.Ack_failed()
        lost = sorted(rank - 1 for rank in dead_ranks if rank - 1 in self.live)
        if not lost:
            return []
        self.live = [worker for worker in self.live if worker not in lost]
        if not self.live:
            raise TrainingFailedError(f"every worker died (ranks {[w + 1 for w in lost]}): nobody is left to train")
        epoch = max(self.served.done) / self.run.iterations_per_epoch
        answer = [other for worker in lost for other in self.served.remove(worker, epoch)]
        world = [0, *(worker + 1 for worker in self.live)]
        goes_on = (
            f"the server goes on with {len(self.live)} workers from update {self.served.server.version} "
            "(their shards are dropped)"
        )
        self.recovery.lose(world, max(self.served.done), noticed, "server", "died", goes_on)
        return [other for other in answer if other in self.live]

    def _states(self) -> list[RankState]:
        """One state per live worker (the weights it last pulled); the server's statistics ride on the first."""
        served = self.served
        states = [RankState(served.pulled[w], EpochStats(), served.done[w], 0, {}, None, None) for w in self.live]
        states[0].stats, states[0].samples, states[0].staleness = self.stats, self.samples, self.staleness
        return states


def _work(comm: MPI.Comm, run: EngineRun, link: _Link, deadline: Deadline, asynchronous: bool) -> bool:
    """A worker's loop; returns whether workers died (the server says so with the stop)."""
    rank = comm.Get_rank()
    worker = rank - 1
    progress = MpiProgress(comm)
    slowdown = partial(run.delays.step_slowdown, rank) if asynchronous else lambda _: 1.0
    pacing = StragglerPacing(slowdown, progress.sleep)
    computed = 0  # this worker's gradients so far: the iteration its slowdown is drawn for
    weights = torch.empty(link.numel, dtype=link.dtype)
    status = MPI.Status()
    while True:
        with deadline.guard("waiting for weights from the server (rank 0)"):
            while not comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
                time.sleep(POLL_SECONDS)
        if status.Get_tag() == TAG_STOP:
            after_failures = np.zeros(1, dtype=np.int64)
            comm.Recv(after_failures, source=0, tag=TAG_STOP)
            return bool(after_failures[0])
        if status.Get_tag() == TAG_CHECKPOINT:  # between two gradients: where this worker's data stands
            epoch = np.zeros(1, dtype=np.int64)
            comm.Recv(epoch, source=0, tag=TAG_CHECKPOINT)
            if run.checkpoint is not None:
                run.checkpoint(int(epoch[0]), {})
            continue
        deadline.wait(comm.Irecv(weights.numpy(), source=0, tag=TAG_WEIGHTS), "receiving weights from rank 0")
        before = run.oracle.samples
        with pacing.work(computed):
            grad, loss = run.oracle(worker, weights.to(link.device))
        computed += 1
        meta = np.array([loss, run.oracle.samples - before], dtype=np.float64)
        payload = grad.detach().cpu().numpy()
        deadline.wait(comm.Isend(meta, dest=0, tag=TAG_META), "sending a gradient's loss to rank 0")
        deadline.wait(comm.Isend(payload, dest=0, tag=TAG_GRAD), "sending a gradient to rank 0")


def run_parameter_server(
    comm: MPI.Comm, run: EngineRun, deadline: Deadline, deterministic: bool, fault_tolerant: bool = False
) -> EngineResult | None:
    """Rank 0 serves, the others work; rank 0 gets the result, the others None."""
    link = _Link(comm, deadline, run.initial_params)
    recovery = Recovery.on(comm, run.world_change, deadline, fault_tolerant) if fault_tolerant else None
    if comm.Get_rank() != 0:
        try:
            after_failures = _work(comm, run, link, deadline, asynchronous=not deterministic)
        except (ProcessFailedError, MPI.Exception) as error:
            if not (fault_tolerant and is_process_failure(error, comm)):
                raise
            raise TrainingFailedError(
                f"rank {comm.Get_rank()}: the parameter server (rank 0) died; the workers stop. --fault-tolerant "
                "survives the death of workers, not of the server: resume the run from its checkpoints (--resume)"
            ) from None
        _end(comm, deadline, after_failures)
        return None
    if deterministic:
        result = _serve_deterministic(comm, run, link)
    else:
        result = _AsynchronousServer(comm, run, link, deadline, recovery).serve()
    _end(comm, deadline, bool(result.world_changes))
    return result


def _end(comm: MPI.Comm, deadline: Deadline, after_failures: bool) -> None:
    """Every rank waits for the others at the end: a barrier, or after deaths the survivors'
    agreement on who is left (a barrier would wait for the dead). Not revoked first: a worker
    still waiting for its stop would take the revocation for the server's death. The old
    communicator is then abandoned: freeing it would wait for the dead too."""
    if not after_failures:
        deadline.wait(comm.Ibarrier(), "the end-of-training barrier")
        return
    with deadline.guard("agreeing with the survivors on the end of training (MPI_Comm_shrink)"):
        abandon(comm, comm.Shrink())
