"""Horovod Elastic for ``ssgd --comm horovod --fault-tolerant``: the Horovod baseline's own way of
surviving a dead worker, to compare with pcasgd's (:mod:`pcasgd.runtime.faults`).

Under ``horovodrun`` in elastic mode (a host-discovery script; ``launch/hosts.sh horovodrun`` on
the test hosts) a worker's death fails the collective in flight on every survivor
(``HorovodInternalError``); Horovod's driver removes the dead worker's host (all its workers),
and ``hvd.elastic.run`` restarts Horovod over the workers left and calls the training function
again. What pcasgd adds:

* **commit**: every :data:`COMMIT_EVERY` steps the rank's step, shared weights and momentum are
  copied (:class:`ElasticRank`'s ``save``); a failure rolls every survivor back to that copy,
  and the copy rank 0 holds is broadcast on re-entry, so all go on from the same state;
* **re-entry**: the survivors exchange who they are (their first rank: their data shard; the
  dead workers' shards are dropped), the lock-step time is recounted for the new size, and the
  event is recorded as ``--fault-tolerant`` records it for the other modes; records are never
  made twice (the record schedule is not rolled back);
* **the recording rank**: rank 0 writes the run's files; if it was among the dead, the survivors
  end with a message (its host's removal takes every worker of that host with it).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import horovod.torch as hvd
from horovod.common.elastic import State

from pcasgd.engine import EngineResult
from pcasgd.errors import ConfigError
from pcasgd.protocol.pacing import LockStepTime
from pcasgd.runtime.recovery import Recovery

#: Steps between two commits: what a failure can cost, against a copy and a broadcast per commit.
COMMIT_EVERY = 8


#: Horovod's gloo timeout when ``HOROVOD_GLOO_TIMEOUT_SECONDS`` is unset (horovodrun sets it from
#: ``--gloo-timeout-seconds``): how long a collective waits for a dead worker before it fails.
GLOO_TIMEOUT_DEFAULT = 30.0


def check_elastic(deadline: float) -> None:
    """Refuse ``--fault-tolerant`` with ``--comm horovod`` outside an elastic ``horovodrun``, or
    with a ``--deadline`` that would end the survivors before gloo tells them of the death."""
    if os.environ.get("HOROVOD_ELASTIC") != "1":
        raise ConfigError(
            "--fault-tolerant with --comm horovod is Horovod Elastic: launch with horovodrun in elastic mode "
            "(--host-discovery-script and --min-np; launch/hosts.sh horovodrun on the test hosts)"
        )
    gloo_timeout = float(os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", GLOO_TIMEOUT_DEFAULT))
    if deadline <= gloo_timeout:
        raise ConfigError(
            f"--deadline {deadline:g} s would end the survivors of a dead worker before Horovod notices the death "
            f"(gloo's timeout: {gloo_timeout:g} s): give horovodrun --gloo-timeout-seconds below --deadline"
        )


class ElasticRank(State):
    """A collective rank under Horovod Elastic: Horovod's ``State`` of the rank's last commit."""

    def __init__(self, rank: Any) -> None:  # a pcasgd.runtime.collective.CollectiveRank
        self.rank = rank
        # its first rank (its data shard and its name in the metrics) is the recovery's identity
        self.recovery = Recovery(rank.rank, rank.comm.Get_size(), rank.run.world_change if rank.rank == 0 else None)
        self.step = rank.first_step
        self._failed_at: float | None = None
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        self.save()

    # -- Horovod's State ----------------------------------------------------------------------

    def save(self) -> None:
        self._saved = copy.deepcopy(self.rank.state_before(self.step))

    def restore(self) -> None:
        self._failed_at = time.time()
        self.rank.load_state(copy.deepcopy(self._saved))

    def sync(self) -> None:
        self._saved = self._bcast_object(self._saved, name="pcasgd.elastic.sync")
        self.rank.load_state(copy.deepcopy(self._saved))

    def reset(self) -> None:
        if self._failed_at is None:  # hosts were removed without a failed collective
            self._failed_at = time.time()

    # -- the run --------------------------------------------------------------------------------

    def train(self) -> EngineResult | None:
        @hvd.elastic.run
        def train_on_this_world(state: ElasticRank) -> EngineResult | None:
            state._enter_world()
            return state.rank.train_steps()

        result = train_on_this_world(self)
        self.recovery.ended()
        return result

    def stepped(self, t: int) -> None:
        """Step ``t - 1`` is done: stamp a new world's first step, and commit every few steps."""
        self.step = t
        self.recovery.stepped()
        if t % COMMIT_EVERY == 0:
            self.commit()

    def _enter_world(self) -> None:
        comm, rank = self.rank.comm, self.rank
        comm.new_world()
        if self._failed_at is None:
            return  # the first world
        recovery = self.recovery
        ids = comm.allgather(recovery.identity)
        lost = sorted(set(recovery.ids) - set(ids))
        rank.starts = LockStepTime(rank.run.delays.step_slowdown, comm.Get_size())
        recorded = dict(zip(recovery.ids, rank.recorded_samples, strict=False))  # rank 0's, by identity
        for identity in lost:
            rank.recorder.lost_samples[identity] = recorded.get(identity, 0)
        goes_on = f"Horovod Elastic goes on with {len(ids)} workers from the commit at step {rank.first_step}"
        recovery.lose(ids, rank.first_step, self._failed_at, "horovod elastic", "was lost with its host", goes_on)
        self._failed_at = None
