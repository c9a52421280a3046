"""Surviving dead ranks (``--fault-tolerant``, Open MPI's ULFM): real mpirun jobs whose ranks are
killed with SIGKILL from outside while they train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.faults import JOB_TAG, epochs_done, rank_pid, run_elastic_example
from pcasgd.algorithms.config import AlgorithmConfig
from pcasgd.app import checkpoint as checkpoints
from pcasgd.app.run_config import RunConfig
from pcasgd.elastic import TorchState
from pcasgd.errors import ConfigError
from tests.mpi_support import ROOT, mpi_env, needs_mpirun, train, train_and_kill

pytestmark = needs_mpirun

# 4 ranks on digits: 45 iterations per epoch; the kills come after epoch 2 of 8.
EPOCHS = 8
BATCH = 8
FLAGS = ["--mode", "pcasgd", "--dataset", "digits", "--model", "mlp", "--batch-size", str(BATCH)]
FLAGS += ["--epochs", str(EPOCHS)]
FLAGS += ["--deadline", "30"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def assert_samples_grow(records: list[dict]) -> None:
    """The samples trained on never drop (so neither goes samples/s below 0): the dead ranks'
    count as last recorded stays in."""
    samples = [record["samples"] for record in records]
    assert samples == sorted(samples) and samples[0] > 0, samples


def assert_survived(run, out, lost: list[int], ranks: int, stepped: bool = True) -> list[dict]:
    """The job ended 0, every epoch has its record, and the final world lacks exactly ``lost``;
    ``stepped``: the survivors trained after each recovery (else they may only have ended the run)."""
    assert run.returncode == 0 and (out / "metrics.jsonl").is_file(), run.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert_samples_grow(records)
    summary = json.loads((out / "summary.json").read_text())
    events = _events(out)
    assert [{k: v for k, v in event.items() if k != "wall_seconds"} for event in events] == summary["world_changes"]
    assert sorted(agent for event in events for agent in event["lost"]) == lost
    assert events[-1]["world"] == [agent for agent in range(ranks) if agent not in lost]
    assert len(summary["iterations"]) == ranks - len(lost) == len(records[-1]["iterations"])
    assert summary["final"]["test_accuracy"] > 0.8  # digits' MLP passes 0.8 in two epochs: training went on
    for event in events:
        assert event["noticed_at"] <= event["recovered_at"]
        if stepped or event["first_step_at"] is not None:
            assert event["recovered_at"] <= event["first_step_at"]
    assert "died" in run.stderr
    return events


def test_an_agent_renumbers_what_it_keeps_per_neighbour_and_forgets_the_dead():
    import torch

    from pcasgd.algorithms.consensus import ConsensusAgent, NeighbourRead, Snapshot

    agent = ConsensusAgent(AlgorithmConfig(mode="pcasgd", lam_adaptive=True), torch.zeros(3))
    reads = [NeighbourRead(j, 0.25, Snapshot(torch.ones(3), torch.full((3,), float(j)), stamp=5), 0) for j in (1, 2, 3)]
    agent.step(torch.zeros(3), reads, 0.25)
    before = agent.state_dict()
    agent.renumber_neighbours({0: 0, 1: 1, 3: 2})  # agent 2 died: 3 becomes 2
    after = agent.state_dict()
    assert sorted(after["mean_square"]) == [1, 2] and after["last_stamp"] == {1: 5, 2: 5}
    assert torch.equal(after["mean_square"][2], before["mean_square"][3])


def test_fault_tolerant_needs_an_asynchronous_decentralized_mpi_run():
    for options, message in (
        ({"backend": "sim"}, "are for --backend mpi"),
        ({"backend": "mpi", "algorithm": AlgorithmConfig(mode="ssgd")}, "decentralized and parameter-server modes"),
        ({"backend": "mpi", "deterministic": True}, "asynchronous mode"),
        ({"backend": "mpi", "shared_windows": True}, "no --shared-windows"),
    ):
        with pytest.raises(ConfigError, match=message):
            RunConfig(fault_tolerant=True, **options)


def test_rejoin_needs_fault_tolerance_and_an_asynchronous_decentralized_mode():
    from pcasgd.runtime.rejoin import healers_of

    for options, message in (
        ({}, "add --fault-tolerant"),
        ({"fault_tolerant": True, "algorithm": AlgorithmConfig(mode="dcasgd-a")}, "asynchronous decentralized"),
        ({"fault_tolerant": True, "algorithm": AlgorithmConfig(mode="dsgd")}, "asynchronous decentralized"),
    ):
        with pytest.raises(ConfigError, match=message):
            RunConfig(backend="mpi", rejoin=True, **options)
    # the healer: the lost agent's first surviving in-neighbour (its rank among the survivors)
    from pcasgd.topology import build

    ring = build("ring", 4)
    assert healers_of([2], [0, 1, 3], ring) == {2: 1}
    assert healers_of([0], [1, 2, 3], ring) == {0: 0}
    assert healers_of([1, 2], [0, 3], ring) == {1: 0, 2: 1}


def test_fault_tolerant_refuses_a_launch_without_ulfm(tmp_path):
    result = train(2, *FLAGS, "--fault-tolerant", "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert "ULFM turned on at launch" in result.stderr and "launch/mpirun.sh --fault-tolerant" in result.stderr


def test_a_killed_rank_is_survived_and_the_run_finishes(tmp_path):
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(2, 0.0)], after_epochs=2)
    (event,) = assert_survived(run, out, lost=[2], ranks=4)
    # The dead rank's samples stay counted: the survivors' steps, each a batch but the last of an
    # epoch (fewer), do not make the final count; the dead one's steps at its last record do.
    records, per_epoch = _records(out), json.loads((out / "summary.json").read_text())["iterations_per_epoch"]
    dead_steps = [0, *(record["iterations"][2] for record in records if len(record["iterations"]) == 4)][-1]
    survivors_least = BATCH * (1 - 1 / per_epoch) * sum(records[-1]["iterations"])
    assert records[-1]["samples"] >= survivors_least + BATCH / 2 * dead_steps, (dead_steps, records[-1])
    assert event["topology"] == "ring without [2]"
    assert event["first_step_at"] - run.killed_at[0] < 30  # the deadline would have ended a hung survivor


def test_a_stopped_rank_is_declared_dead_within_the_deadline_and_survived(tmp_path):
    """SIGSTOP: the rank neither dies nor publishes. Open MPI's failure detector declares it dead
    after half the deadline without heartbeats, the survivors go on, and the recovery ends the
    stopped process (mpirun waits for every process): the job ends, with its summary."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(2, 0.0)], after_epochs=2, signal_number=signal.SIGSTOP)
    # the survivors finish training first (15 s of silence, in a run of a few seconds): they had
    # waited for the stopped rank at the end until their deadlines ended them
    (event,) = assert_survived(run, out, lost=[2], ranks=4, stepped=False)
    assert event["noticed_at"] - run.killed_at[0] < 30  # --deadline 30: within it


def test_a_rank_ended_by_sigterm_is_survived_and_the_launcher_waits_for_the_others(tmp_path):
    """A rank ended by SIGTERM had exited 143, and mpirun with it, leaving the survivors orphaned
    before rank 0 wrote the summary: now it ends as a killed rank does."""
    out = tmp_path / "run"
    wrapper = {"launcher": ["bash", "launch/mpirun.sh"], "launch_flags": ["-n", "4"], "program": []}
    run = train_and_kill(4, out, FLAGS, kills=[(2, 0.0)], after_epochs=2, signal_number=signal.SIGTERM, **wrapper)
    assert_survived(run, out, lost=[2], ranks=4)
    assert "rank 2 got signal 15: under --fault-tolerant it ends as a dead rank does" in run.stderr


def test_a_run_that_lost_a_rank_resumes_whole_and_keeps_its_records(tmp_path):
    """Rank 2 dies at epoch 2 of 8; the run finishes on 3 ranks, then resumes on 4 to epoch 10:
    rank 2 from its own last checkpoint, the others from theirs. It had failed with KeyError 2
    on rank 0 and deleted the finished run's summary and model."""
    out = tmp_path / "run"
    assert_survived(train_and_kill(4, out, FLAGS, kills=[(2, 0.0)], after_epochs=2), out, lost=[2], ranks=4)
    flags = [*FLAGS, "--epochs", "10", "--resume", str(out)]  # the last --epochs counts
    resumed = train_and_kill(4, out, flags, kills=[], after_epochs=0)
    assert resumed.returncode == 0 and (out / "summary.json").is_file(), resumed.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, 11))
    assert_samples_grow(records)
    assert len(records[-1]["iterations"]) == 4  # the world is whole again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["epochs"] == 10 and summary["final"]["test_accuracy"] > 0.8


@pytest.mark.parametrize("ranks", [3, 5])
def test_a_run_that_lost_a_rank_resumes_onto_another_number_of_ranks(tmp_path, ranks):
    """Rank 2 of 4 dies at epoch 2 of 8; the finished run resumes to epoch 10 on 3 ranks (the
    survivors 0, 1, 3 go on) or on 5 (the survivors, then copies of a lower in-neighbour on the
    ring: agent 3 of agent 3's state through new agent 2, agent 4 of agent 0's). The data is
    sharded anew and every record stays, none twice."""
    out = tmp_path / "run"
    assert_survived(train_and_kill(4, out, FLAGS, kills=[(2, 0.0)], after_epochs=2), out, lost=[2], ranks=4)
    kept = _records(out)
    flags = [*FLAGS, "--epochs", "10", "--resume", str(out)]
    resumed = train_and_kill(ranks, out, flags, kills=[], after_epochs=0)
    assert resumed.returncode == 0 and (out / "summary.json").is_file(), resumed.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, 11))
    assert_samples_grow(records)
    summary = json.loads((out / "summary.json").read_text())
    resized = summary["resized"]
    assert resized["from_agents"] == 4 and resized["to_agents"] == ranks and resized["alive"] == [0, 1, 3]
    assert resized["sources"] == [0, 1, 3, 3, 0][:ranks]
    assert records[: resized["epoch"]] == kept[: resized["epoch"]]  # the records before the resume stay
    assert len(records[-1]["iterations"]) == ranks == len(summary["partition"]["samples_per_agent"])
    assert summary["config"]["agents"] == ranks and summary["final"]["test_accuracy"] > 0.8


def test_only_asynchronous_decentralized_runs_resume_onto_another_number_of_ranks(tmp_path):
    out = tmp_path / "run"
    flags = ["--mode", "ssgd", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--out", str(out)]
    assert train(2, *flags).returncode == 0
    result = train(3, *flags[:-2], "--epochs", "3", "--resume", str(out))
    assert result.returncode != 0
    assert "only the asynchronous decentralized modes resume onto another number of ranks" in result.stderr


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_your_own_training_loop_survives_a_dead_rank_inside_step(tmp_path, signal_number):
    """examples/digits_own_loop.py --fault-tolerant on 4 ranks: rank 2 is killed (or stopped)
    once rank 0 has trained 3 of 20 epochs; the DecentralizedOptimizer of the others survives it
    in step(), their reset callback re-shards the data over 3 ranks (pcasgd.rank/size answer for
    the new world), and the three finish with the script's own accuracy print well above chance
    (0.1). A stopped rank is declared dead by ULFM's failure detector, which launch/mpirun.sh arms
    for your own program (30 s of silence for the optimizer's default 60 s deadline); before, the
    survivors' reads of it waited until their deadline ended them."""
    env = {**mpi_env(), JOB_TAG: str(tmp_path)}
    command = ["bash", "launch/mpirun.sh", "-n", "4", "examples/digits_own_loop.py", "--epochs", "20"]
    job = subprocess.Popen(
        [*command, "--fault-tolerant"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    try:
        for line in job.stdout:
            lines.append(line)
            if line.startswith("rank 0 epoch 3:"):
                os.kill(rank_pid(tmp_path, 2), signal_number)
                break
        stdout, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    lines += stdout.splitlines()
    assert job.returncode == 0, stderr[-3000:]
    assert "rank(s) [2] died; 3 ranks go on from step" in stderr
    final = {line.split()[1]: float(line.split()[-1]) for line in lines if " epoch 20: " in line}
    assert sorted(final) == ["0", "1", "3"] and min(final.values()) > 0.8, lines[-6:]


def test_horovods_elastic_example_ported_survives_a_rank_killed_mid_epoch(tmp_path, torchvision_mnist):
    """examples/horovod_pytorch_mnist_elastic.py (Horovod's elastic example, 7 diff lines) on
    4 ranks, one epoch of Fashion-MNIST: rank 2 is killed once a rank is a quarter through its
    shard; the other three finish, and rank 0's own test print is well above chance (10%)."""
    run = run_elastic_example(4, torchvision_mnist, 42, 2, mpi_env(), 400, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank(s) [2] died; 3 ranks go on from step" in run.stderr
    assert run.progressed_at is not None, run.stdout[-2000:]  # a progress line past the kill's
    assert run.accuracy is not None and run.accuracy > 40.0, run.stdout[-2000:]


def test_elastic_state_needs_a_fault_tolerant_optimizer():
    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="fault_tolerant=True"):
        TorchState(torch.nn.Linear(2, 2), sgd, epoch=1, batch=0)


def test_elastic_state_commits_and_restores_its_counters():
    """Nothing is rolled back in pcasgd (a death is survived inside step()), but a loop that
    restores gets its counters back as last committed."""
    optimizer = SimpleNamespace(fault_tolerant=True, close=lambda: None)
    state = TorchState(torch.nn.Linear(2, 2), optimizer, epoch=1, batch=0)
    state.epoch, state.batch = 2, 5
    state.commit()
    state.batch = 9
    state.restore()
    assert (state.epoch, state.batch) == (2, 5)


def test_one_of_eight_ranks_killed_is_survived(tmp_path):
    out = tmp_path / "run"
    flags = [*FLAGS, "--topology", "exp"]
    run = train_and_kill(8, out, flags, kills=[(5, 0.0)], after_epochs=2, timeout=400)
    (event,) = assert_survived(run, out, lost=[5], ranks=8)
    assert event["world"] == [0, 1, 2, 3, 4, 6, 7]


def test_two_ranks_killed_at_once_leave_a_cut_ring_rejoined(tmp_path):
    """Ring 0-1-2-3 without 1 and 3: 0 and 2 have no edge left; the survivors' graph adds one."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(1, 0.0), (3, 0.0)], after_epochs=2)
    events = assert_survived(run, out, lost=[1, 3], ranks=4)
    assert events[-1]["world"] == [0, 2]


def test_a_second_death_after_a_recovery_is_survived_too(tmp_path):
    """Rank 3 is killed once the survivors of rank 2's death train again."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(2, 0.0), (3, None)], after_epochs=2)
    first, second = assert_survived(run, out, lost=[2, 3], ranks=4)
    assert first["lost"] == [2] and second["lost"] == [3] and second["world"] == [0, 1]


def test_a_death_during_the_recovery_from_another_is_survived(tmp_path):
    """Rank 3 is killed 0.15 s after rank 2, while the survivors agree on rank 2's death (or
    just after: both ways they must finish). When the survivors built new windows there, Open
    MPI 5.0.11 crashed them in 4 of 14 such runs on a loaded machine; the windows now stay."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(2, 0.0), (3, 0.15)], after_epochs=2)
    events = assert_survived(run, out, lost=[2, 3], ranks=4)
    assert events[-1]["world"] == [0, 1]


def test_the_death_of_rank_0_is_survived_and_the_lowest_survivor_records_on(tmp_path):
    """Rank 0 records the run; killed at 40 % (3 of 8 epochs recorded), rank 1 takes over the
    same files: every epoch recorded once, in order, with the samples growing, then the summary
    and the model."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, FLAGS, kills=[(0, 0.0)], after_epochs=3, recorded=True)
    (event,) = assert_survived(run, out, lost=[0], ranks=4)
    assert event["world"] == [1, 2, 3] and (out / "model.pt").is_file()
    assert "final test accuracy" in run.stdout


def assert_replaced(run, out, lost: int, ranks: int) -> dict:
    """``--rejoin``: the job ended 0 with every record, the death of ``lost`` was followed by its
    replacement, which was healed, stepped and trained on; returns the event."""
    assert run.returncode == 0 and (out / "summary.json").is_file(), run.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert_samples_grow(records)
    summary = json.loads((out / "summary.json").read_text())
    (event,) = _events(out)
    survivors = [agent for agent in range(ranks) if agent != lost]
    assert event["lost"] == [lost] == event["rejoined"] and event["world"] == survivors
    assert event["world_after_rejoin"] == [*survivors, lost]  # the survivors keep their ranks
    assert event["noticed_at"] <= event["recovered_at"] <= event["rejoined_at"] <= event["first_step_at"]
    assert len(summary["iterations"]) == ranks == len(records[-1]["iterations"])  # the world is whole again
    assert summary["iterations"][-1] > event["iteration"]  # the replacement trained on from its healer's iteration
    assert summary["final"]["test_accuracy"] > 0.8
    assert f"rank {lost} (a replacement) took its first step" in run.stderr
    joined_in = event["iteration"] / summary["iterations_per_epoch"]  # the epoch it joined in
    assert max(checkpoints.available_epochs(out, lost)) > joined_in  # it checkpoints as the agent it replaces
    return event


def test_a_killed_rank_is_replaced_in_place_and_the_world_grows_back(tmp_path):
    """--rejoin: rank 2 of 4 killed at 25 %; the survivors spawn a replacement, which takes agent
    2's place healed from agent 1 (its in-neighbour on the ring), and the four train to the end."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, [*FLAGS, "--rejoin"], kills=[(2, 0.0)], after_epochs=2)
    event = assert_replaced(run, out, lost=2, ranks=4)
    assert event["topology_after_rejoin"] == "ring over agents [0, 1, 3, 2]"
    assert "rank(s) [2] replaced by new processes" in run.stderr


def test_rank_0_replaced_in_place_hands_on_the_records_and_the_run_resumes_with_all_of_them(tmp_path):
    """--rejoin with rank 0 killed at 40 %: rank 1 records on, the replacement becomes agent 0
    (and writes agent 0's checkpoints, without records). Resuming the finished run to epoch 10
    keeps every record once: the records come from the checkpoint that holds the most (before,
    rank 0's own: the resume cut metrics.jsonl from 8 records to 3)."""
    out = tmp_path / "run"
    run = train_and_kill(4, out, [*FLAGS, "--rejoin"], kills=[(0, 0.0)], after_epochs=3, recorded=True)
    assert_replaced(run, out, lost=0, ranks=4)
    flags = [*FLAGS, "--epochs", "10", "--resume", str(out)]
    resumed = train_and_kill(4, out, flags, kills=[], after_epochs=0)
    assert resumed.returncode == 0 and (out / "summary.json").is_file(), resumed.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, 11))
    assert_samples_grow(records)


def _replacement_pid(out) -> int | None:
    """The pid of a replacement process training into ``out``: spawned, it is alone in its own MPI job."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pcasgd.cli" in command and str(out).encode() in command and b"OMPI_COMM_WORLD_SIZE=1" in environ:
            return int(entry.name)
    return None


def test_a_replacement_killed_in_turn_is_replaced_again_and_the_launcher_exits_0(tmp_path):
    """--rejoin, a second death: rank 2 killed at epoch 3, then its replacement killed once it has
    stepped. Another replacement joins; mpirun exits 137 (the replacement's job is not under
    ULFM's flag) and launch/mpirun.sh, seeing this launch's summary.json, exits 0."""
    out, epochs = tmp_path / "run", 100
    flags = [*FLAGS, "--epochs", str(epochs), "--rejoin", "--fault-tolerant", "--out", str(out)]
    logs = [open(tmp_path / name, "w") for name in ("stdout", "stderr")]  # noqa: SIM115 - closed below
    command = ["bash", "launch/mpirun.sh", "-n", "4", *flags]
    job = subprocess.Popen(command, cwd=ROOT, env=mpi_env(), stdout=logs[0], stderr=logs[1])
    try:
        while epochs_done(out, recorded=True) < 3:
            assert job.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(rank_pid(out, 2), signal.SIGKILL)
        while "took its first step" not in (tmp_path / "stderr").read_text():
            assert job.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(_replacement_pid(out), signal.SIGKILL)
        job.wait(timeout=300)
    finally:
        job.kill()
        for log in logs:
            log.close()
    stderr = (tmp_path / "stderr").read_text()
    assert job.returncode == 0, stderr[-3000:]
    assert "mpirun exited 137 (a replacement process died) but the run finished" in stderr
    records = _records(out)
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert_samples_grow(records)
    events = _events(out)
    assert [event["lost"] for event in events] == [[2], [2]] == [event["rejoined"] for event in events]
    assert len(json.loads((out / "summary.json").read_text())["iterations"]) == 4


def test_the_death_of_the_parameter_server_ends_the_run_with_a_message_and_keeps_the_metrics(tmp_path):
    """In a parameter-server mode rank 0 is the server: its state dies with it."""
    out = tmp_path / "run"
    flags = [*FLAGS[:1], "dcasgd-a", *FLAGS[2:]]
    run = train_and_kill(4, out, flags, kills=[(0, 0.0)], after_epochs=2, timeout=120, recorded=True)
    assert "the parameter server (rank 0) died" in run.stderr
    assert len(_records(out)) >= 2
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("killed", [[], [0, 1]])
def test_launch_mpirun_sh_fails_a_fault_tolerant_run_that_wrote_no_summary(tmp_path, killed):
    """Under ULFM mpirun exits 0 whatever became of the ranks, every rank killed included (as
    when a death during the survivors' window rebuild crashes them in Open MPI: docs/mpi.md), so
    launch/mpirun.sh looks for the run's summary.json: a run that finished passes, one whose
    ranks all died fails with a message."""
    out = tmp_path / "run"
    wrapper = {"launcher": ["bash", "launch/mpirun.sh"], "launch_flags": ["-n", "2"], "program": []}
    run = train_and_kill(2, out, FLAGS, kills=[(rank, 0.0) for rank in killed], after_epochs=1, **wrapper)
    assert run.returncode == (1 if killed else 0), run.stderr[-3000:]
    assert (f"the run wrote no {out}/summary.json" in run.stderr) == bool(killed), run.stderr[-3000:]


@pytest.mark.parametrize(("mode", "lost"), [("dcasgd-a", [1, 3]), ("sasgd", [2])])
def test_the_parameter_server_goes_on_without_dead_workers(tmp_path, mode, lost):
    """Rank 0 serves workers 1..3. dcasgd-a applies each gradient as it comes: two deaths at once
    leave it one worker. sasgd is hardsync (n = 1: every update waits for every live worker's
    gradient): after a death its updates average the two live workers' gradients."""
    out = tmp_path / "run"
    flags = [*FLAGS[:1], mode, *FLAGS[2:]]
    run = train_and_kill(4, out, flags, kills=[(rank, 0.0) for rank in lost], after_epochs=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["epoch"] for r in _records(out)] == list(range(1, EPOCHS + 1))
    assert_samples_grow(_records(out))
    summary = json.loads((out / "summary.json").read_text())
    events = _events(out)
    assert [{k: v for k, v in event.items() if k != "wall_seconds"} for event in events] == summary["world_changes"]
    assert sorted(agent for event in events for agent in event["lost"]) == lost
    assert events[-1]["world"] == [rank for rank in range(4) if rank not in lost]
    assert len(summary["iterations"]) == 3 - len(lost)
    assert summary["final"]["test_accuracy"] > 0.8
    assert all(event["noticed_at"] <= event["recovered_at"] <= event["first_step_at"] for event in events)
    assert "the server goes on with" in run.stderr
