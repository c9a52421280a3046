"""The protocol steps both engines call (pcasgd/protocol/) and the record schedule, on their own."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from pcasgd import delays, log, topology
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.algorithms.consensus import ConsensusAgent, NeighbourRead, Snapshot
from pcasgd.engine import RecordSchedule, all_finite
from pcasgd.errors import ConfigError, TrainingFailedError
from pcasgd.optim import DistributedOptimizer
from pcasgd.protocol.ages import Latest
from pcasgd.protocol.reads import Reads, assemble_reads, fetch_reads
from pcasgd.protocol.server import VersionedServer
from pcasgd.runtime.recovery import ProcessIdentity, Recovery


def snapshot_of(j: int, stamp: int, value: float = 1.0, period: float = 1.0) -> Snapshot:
    """Neighbour ``j``'s snapshot ``stamp``, published at time ``stamp * period`` (one step each
    ``period``), knowing of no run progress beyond its own."""
    return Snapshot(torch.full((3,), value + j), torch.zeros(3), stamp, stamp * period, period, stamp)


def gather_reads(agent, k, graph, config, lags, read, now, own_period) -> Reads:
    return assemble_reads(agent, k, graph, fetch_reads(agent, k, graph, config, lags, read), now, own_period)


def newest(stamp: int, period: float = 1.0) -> Latest:
    return Latest(stamp, stamp * period, period)


def test_reads_take_each_neighbour_lag_stamps_behind_its_newest_and_measure_staleness_and_ages():
    ring = topology.build("ring", 4)
    lags = delays.parse("edge:0-1=3")
    asked = []

    def read(j: int, lag: int) -> tuple[Snapshot, Latest]:
        asked.append((j, lag))
        return snapshot_of(j, 10 - lag), newest(10)

    gathered = gather_reads(0, 10, ring, AlgorithmConfig(mode="asgd"), lags, read, now=10.5, own_period=0.5)
    assert sorted(asked) == [(1, 3), (3, 0)]
    assert {r.source: r.staleness for r in gathered.reads} == {1: 3, 3: 0}
    # 3 and 0 stamps behind the newest, published at 10 and read at 10.5: 3.5 and 0.5 of the
    # publishers' steps, 7 and 1 of the reader's
    assert {r.source: (r.age, r.own_age) for r in gathered.reads} == {1: (3.5, 7.0), 3: (0.5, 1.0)}
    assert gathered.progress == 10
    assert math.isclose(gathered.self_weight + sum(r.weight for r in gathered.reads), 1.0)
    assert gathered.left_out == []


def test_synchronous_modes_read_without_the_injected_lag():
    asked = []

    def read(j: int, lag: int) -> tuple[Snapshot, Latest]:
        asked.append(lag)
        return snapshot_of(j, 5), newest(5)

    ring, config = topology.build("ring", 4), AlgorithmConfig(mode="dsgd")
    gather_reads(0, 5, ring, config, delays.parse("fixed:4"), read, now=5.0, own_period=1.0)
    assert asked == [0, 0]


def test_a_non_finite_snapshot_is_left_out_and_its_weight_goes_to_the_reader():
    ring = topology.build("ring", 4)

    def read(j: int, lag: int) -> tuple[Snapshot, Latest]:
        return (snapshot_of(j, 7, math.nan) if j == 1 else snapshot_of(j, 7)), newest(7)

    gathered = gather_reads(0, 7, ring, AlgorithmConfig(mode="asgd"), delays.parse("none"), read, 7.0, 1.0)
    assert [r.source for r in gathered.reads] == [3] and gathered.left_out == [(1, 7)]
    assert math.isclose(gathered.self_weight, float(ring.weights[0, 0] + ring.weights[0, 1]))


def test_the_versioned_server_answers_pulls_with_lagged_versions_and_hardsync_waits():
    params = torch.zeros(2)
    lagged = VersionedServer(AlgorithmConfig(mode="ps-asgd", lr=1.0), delays.parse("fixed:1"), params, 2)
    assert torch.equal(lagged.pull(0), params)
    _, answer = lagged.push(0, torch.ones(2), 0.0)
    assert answer == [0] and lagged.params.tolist() == [-1.0, -1.0]
    assert lagged.pull(0).tolist() == [0.0, 0.0]  # one version behind
    hardsync = VersionedServer(AlgorithmConfig(mode="sasgd", sasgd_n=1, lr=1.0), delays.parse("none"), params, 2)
    for worker in (0, 1):
        hardsync.pull(worker)
    report, answer = hardsync.push(0, torch.ones(2), 0.0)
    assert not report.applied and answer == [] and hardsync.waiting == [0]
    report, answer = hardsync.push(1, torch.ones(2), 0.0)
    assert report.applied and answer == [0, 1] and hardsync.waiting == []
    assert hardsync.done == [1, 1] and hardsync.release_all() == []


def test_a_dead_worker_leaves_hardsync_applying_what_the_live_ones_buffered():
    """Three workers, hardsync (c = 3): two gradients wait for the third worker, which dies; the
    update is then made of the two (their mean) and both are answered; after that c = 2."""
    server = VersionedServer(AlgorithmConfig(mode="sasgd", sasgd_n=1, lr=1.0), delays.parse("none"), torch.zeros(2), 3)
    for worker in range(3):
        server.pull(worker)
    server.push(0, torch.full((2,), 1.0), 0.0)
    server.push(2, torch.full((2,), 3.0), 0.0)
    assert server.waiting == [0, 2] and server.params.tolist() == [0.0, 0.0]
    assert server.remove(1, 0.0) == [0, 2]
    assert server.params.tolist() == [-2.0, -2.0] and server.server.version == 1 and server.waiting == []
    for worker in (0, 2):
        server.pull(worker)
    assert not server.push(0, torch.ones(2), 0.0)[0].applied
    report, answer = server.push(2, torch.ones(2), 0.0)
    assert report.applied and answer == [0, 2]
    asynchronous = VersionedServer(AlgorithmConfig(mode="dcasgd-a"), delays.parse("none"), torch.zeros(2), 2)
    asynchronous.pull(1)
    assert asynchronous.remove(1, 0.0) == [] and asynchronous.server.version == 0


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (0, [(1, True), (2, True)]),
        (4, [(0.4, False), (0.8, False), (1, True), (1.2, False), (1.6, False), (2, True), (2.4, False), (2.8, False)]),
    ],
)
def test_the_record_schedule_yields_boundaries_and_marks_in_order_but_never_the_last(interval, expected):
    schedule = RecordSchedule(iterations_per_epoch=10, epochs=3, interval=interval)
    due = [(round(epoch, 6), is_epoch) for position in range(31) for epoch, is_epoch in schedule.due(float(position))]
    assert due == expected


def test_work_ending_at_a_boundary_belongs_before_it():
    schedule = RecordSchedule(iterations_per_epoch=10, epochs=3)
    assert list(schedule.due(10.0, ends=True)) == []  # a push ending at 10 is still epoch 1's
    assert list(schedule.due(10.0)) == [(1, True)]  # an iteration starting at 10 is epoch 2's


def test_every_backend_and_family_has_one_engine_and_servers_take_one_more_rank():
    from pcasgd.dispatch import BACKENDS, ENGINES, FAMILIES, agents_in, ranks_needed

    assert set(ENGINES) == {(backend, family) for backend in BACKENDS for family in FAMILIES}
    assert [ranks_needed(family, 4) for family in FAMILIES] == [4, 5, 4]
    assert all(agents_in(family, ranks_needed(family, 7)) == 7 for family in FAMILIES)


def test_a_straggler_sleeps_its_extra_share_of_the_last_work_before_each_step():
    from pcasgd.protocol.pacing import StragglerPacing

    slept = []
    pacing = StragglerPacing(lambda k: 3.0, slept.append)
    for k, work in enumerate((0.02, 0.01)):
        with pacing.work(k):
            time.sleep(work)
    assert len(slept) == 1 and slept[0] >= 2 * 0.02  # after the first step only: twice its work
    plain = StragglerPacing(lambda k: 1.0, slept.append)
    with plain.work(0):
        pass
    with plain.work(1):
        pass
    assert len(slept) == 1
    transient = StragglerPacing(lambda k: 4.0 if k == 2 else 1.0, slept.append)
    for k in range(4):
        with transient.work(k):
            time.sleep(0.01)
    assert len(slept) == 2 and slept[1] >= 3 * 0.01  # only iteration 2 is slowed: 3 times its work


def test_transient_slowdowns_are_seeded_per_rank_and_iteration_and_hit_about_p_of_the_steps():
    model = delays.parse("transient:0.25=4+straggler:1=2", seed=5)
    factors = [[model.step_slowdown(rank, k) for k in range(2000)] for rank in range(2)]
    assert factors == [[model.step_slowdown(rank, k) for k in range(2000)] for rank in range(2)]
    assert set(factors[0]) == {1.0, 4.0} and set(factors[1]) == {2.0, 8.0}
    assert factors[0] != [f / 2 for f in factors[1]]  # each rank draws its own
    share = factors[0].count(4.0) / 2000
    assert 0.2 < share < 0.3  # 0.25 +- 5 standard deviations (0.0097)
    assert delays.parse("transient:0.5=3", seed=1).has_slowdown and not delays.parse("fixed:2").has_slowdown


def test_lock_step_time_adds_each_iteration_of_the_slowest_rank():
    from pcasgd.protocol.pacing import LockStepTime

    starts = LockStepTime(lambda rank, k: 3.0 if (rank, k) == (1, 1) else 1.0 + rank, 2)
    assert [starts.start(t) for t in range(4)] == [0.0, 2.0, 5.0, 7.0]


@pytest.mark.parametrize(("overlap", "completes_at"), [(True, [None, None, 1, 2]), (False, [None, 1, 2, 3])])
def test_odsgd_reductions_complete_one_step_late_with_overlap_and_at_once_without(overlap, completes_at):
    from pcasgd.protocol.one_step_delay import ReductionQueue

    queue = ReductionQueue(AlgorithmConfig(mode="odsgd", odsgd_overlap=overlap, odsgd_warmup=1))
    completed = []
    for step in range(4):
        if queue.warming_up(step):
            completed.append(None)
            continue
        queue.start(step, f"reduction of {step}")
        done = [started for started, _ in queue.due(step)]
        completed.append(done[0] if done else None)
    assert completed == completes_at
    assert [started for started, _ in queue.drain()] == ([3] if overlap else [])


def test_one_odsgd_step_warms_up_then_applies_each_mean_a_step_late_and_steps_locally_from_it():
    """The one odsgd step every engine calls (simulator, MPI, optimizer API), against the
    equations by hand: momentum 0, two agents, scalar weights, warm-up 1, one reduction in flight."""
    from pcasgd.algorithms.collective import OneStepDelayAgent
    from pcasgd.protocol.one_step_delay import ReductionQueue, complete_reductions, one_step_delay_step

    config = AlgorithmConfig(mode="odsgd", lr=0.1, momentum=0.0, odsgd_warmup=1, odsgd_overlap=True)
    agents = [OneStepDelayAgent(config, torch.tensor([1.0], dtype=torch.float64)) for _ in range(2)]
    queue: ReductionQueue[torch.Tensor] = ReductionQueue(config)
    grads = {0: [1.0, 3.0], 1: [2.0, 4.0], 2: [-1.0, 5.0]}
    asked = []

    def mean_of(mean, started):
        asked.append(started)
        return mean

    lr, local_lr = config.lr_at(0.0), config.local_lr_at(0.0)
    staleness = []
    for step, g in grads.items():
        g = [torch.tensor([x], dtype=torch.float64) for x in g]
        staleness.append(one_step_delay_step(agents, g, queue, step, (g[0] + g[1]) / 2, mean_of))
    w1 = 1.0 - lr * 2.0  # warm-up: the mean of step 0 at once
    w2 = w1 - lr * 3.0  # step 2 completes the mean of step 1
    assert staleness == [[0], [], [1]] and asked == [0, 1]
    for agent, g in zip(agents, grads[2], strict=True):
        assert agent.global_params.item() == pytest.approx(w2)
        assert agent.local_params.item() == pytest.approx(w2 - local_lr * g)
    assert complete_reductions(agents, queue.drain(), mean_of) == 1 and asked == [0, 1, 2]
    assert all(agent.global_params.item() == pytest.approx(w2 - lr * 2.0) for agent in agents)


def test_a_resumed_schedule_skips_the_records_made_before_the_checkpoint():
    schedule = RecordSchedule(iterations_per_epoch=10, epochs=4, interval=5)
    schedule.skip_to(20.0)
    assert [(round(e, 6), b) for e, b in schedule.due(31.0)] == [(2.5, False), (3, True)]  # epoch 2: before


def test_flat_vectors_stay_on_the_parameters_device_and_mixed_devices_are_refused():
    from pcasgd.errors import ConfigError
    from pcasgd.flat import flat_device

    on_meta = [torch.empty(3, device="meta"), torch.empty(2, device="meta")]
    assert flat_device(on_meta) == torch.device("meta")  # as a model on cuda:1 keeps its vectors on cuda:1
    assert flat_device([torch.zeros(2)]) == torch.device("cpu")
    with pytest.raises(ConfigError, match="one device"):
        flat_device([torch.zeros(2), torch.empty(2, device="meta")])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_finiteness_check_sees_nan_and_inf_and_is_not_fooled_by_an_overflowing_sum(dtype):
    big = torch.finfo(dtype).max
    assert all_finite(torch.tensor([big, big, 1.0], dtype=dtype))  # the sum overflows, no element does
    assert not all_finite(torch.tensor([1.0, math.nan, 2.0], dtype=dtype))
    assert not all_finite(torch.tensor([math.inf, -math.inf], dtype=dtype))  # the sum is nan
    assert not all_finite(torch.tensor([big, math.inf], dtype=dtype))


def test_an_agent_state_without_weights_resumes_the_counters_and_keeps_the_weights_it_has():
    config = AlgorithmConfig(mode="pcasgd", lr=0.1, lam_adaptive=True)
    agent = ConsensusAgent(config, torch.zeros(3))
    read = NeighbourRead(1, 0.5, Snapshot(torch.ones(3), torch.full((3,), 2.0), 0), staleness=2)
    for _ in range(3):
        agent.step(torch.ones(3), [read], 0.5)
    light, full = agent.state_dict(weights=False), agent.state_dict()
    assert set(full) - set(light) == {"params", "velocity", "last_step", "last_grad", "history", "seen"}
    other = ConsensusAgent(config, torch.full((3,), 7.0))
    other.load_state_dict(light)
    assert torch.equal(other.params, torch.full((3,), 7.0)) and other.iteration == 3
    assert torch.equal(other._mean_square[1], agent._mean_square[1])


def test_the_optimizer_api_refuses_the_parameter_server_modes_before_touching_mpi():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="need a server rank"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, mode="dcasgd-a")


def test_the_optimizer_api_says_how_to_pass_horovods_named_parameters():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match="pass \\(name, tensor\\) pairs as named_parameters="):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(), mode="ssgd")


def test_deaths_faster_than_a_step_are_each_reported_once_at_the_next_step(capsys):
    log.to_stderr()  # as pcasgd train and pcasgd.init() set it up
    reported = []
    changes = Recovery(0, 4, reported.append)
    changes.lose([0, 2, 3], 122, time.time(), "server", "died", "3 go on")
    changes.lose([0, 2], 122, time.time(), "server", "died", "2 go on")
    assert reported == []  # no step yet: neither event is complete
    changes.stepped()
    changes.stepped()
    assert [event["lost"] for event in reported] == [[1], [3]] and reported == changes.events
    assert all(e["noticed_at"] <= e["recovered_at"] <= e["first_step_at"] for e in reported)
    changes.lose([0], 130, time.time(), "server", "died", "1 goes on")
    changes.ended()  # the run ended before another step: reported as it is
    assert reported[-1]["lost"] == [2] and reported[-1]["first_step_at"] is None and len(reported) == 3
    assert changes.ids == [0]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("pcasgd: warning: rank(s) [1] died; 3 go on (noticed and recovered in ")
    assert len(lines) == 3


def test_a_rank_that_does_not_record_logs_the_recovery_silently(capsys):
    changes = Recovery(2, 4, None)
    changes.lose([0, 2, 3], 10, time.time(), "ring", "died", "3 go on")
    changes.stepped()
    assert capsys.readouterr().err == "" and changes.events[0]["lost"] == [1]


def test_the_loss_of_rank_0_is_not_survived_by_the_recording_seam():
    with pytest.raises(TrainingFailedError, match="rank 0, which records the run, died"):
        Recovery(1, 3, None).lose([1, 2], 10, time.time(), "ring", "died", "")


def test_a_declared_dead_process_that_still_runs_here_is_killed_and_no_other_is():
    """A stopped rank (SIGSTOP) declared dead still holds mpirun: the seam ends it. A process of
    the same pid but another start time (the pid reused) is left alone."""
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        identity = ProcessIdentity.of(stopped.pid)
        assert identity is not None
        assert not replace(identity, started=str(int(identity.started) + 1)).end()
        assert stopped.poll() is None
        assert not replace(identity, namespace="pid:[0]").end()  # another process namespace: unreachable
        Recovery(0, 2, None, [None, identity]).lose([0], 5, time.time(), "ring", "died", "")
        assert stopped.wait(timeout=10) == -signal.SIGKILL
        assert not identity.end()  # gone: nothing to kill
    finally:
        stopped.kill()
        stopped.wait()
