"""``pcasgd supervise`` (launch/elastic.sh): a real launch/mpirun.sh job restarted from its
checkpoints at the size a host-discovery script allows, or grown back after a lost rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.faults import rank_pid
from pcasgd.app.supervisor import _without_start_flags, parse_slots
from pcasgd.errors import ConfigError
from tests.mpi_support import ROOT, mpi_env, needs_mpirun

FLAGS = ["--mode", "pcasgd", "--dataset", "digits", "--model", "mlp", "--batch-size", "8", "--deadline", "30"]
EPOCHS = 60


def test_host_discovery_lines_count_their_slots():
    assert parse_slots("node1:2\nnode2:3\n\nnode3\n") == 6
    with pytest.raises(ConfigError, match="expected 'host:slots'"):
        parse_slots("node1:two\n")


def test_restarts_resume_instead_of_starting_over():
    flags = ["--mode", "asgd", "--overwrite", "--resume", "runs/a", "--epochs", "3", "--resume=runs/b"]
    assert _without_start_flags(flags) == ["--mode", "asgd", "--epochs", "3"]


def _records(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _supervise(tmp_path: Path, extra: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    slots, out = tmp_path / "slots", tmp_path / "run"
    slots.write_text("localhost:4\n")
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {slots}\n")
    discover.chmod(0o755)
    command = ["bash", "launch/elastic.sh", "--hosts-script", str(discover), "--poll", "0.5", "--"]
    command += [*FLAGS, "--epochs", str(EPOCHS), "--out", str(out), *extra]
    job = subprocess.Popen(command, cwd=ROOT, env=mpi_env(), stderr=subprocess.PIPE, text=True)
    return job, slots, out


def _when_recorded(job: subprocess.Popen, out: Path, epochs: int, timeout: float = 200) -> None:
    ends = time.monotonic() + timeout
    while _records(out) < epochs:
        assert job.poll() is None and time.monotonic() < ends, f"{_records(out)} records, job {job.poll()}"
        time.sleep(0.2)


def _finished(job: subprocess.Popen, out: Path) -> dict:
    try:
        _, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # every record, none twice
    return json.loads((out / "summary.json").read_text())


def _restarts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "restarts.jsonl").read_text().splitlines()]


@needs_mpirun
def test_a_host_leaving_restarts_the_job_on_fewer_ranks_from_its_checkpoints(tmp_path):
    job, slots, out = _supervise(tmp_path, [])
    _when_recorded(job, out, 10)
    slots.write_text("localhost:3\n")
    summary = _finished(job, out)
    assert [(r["from_ranks"], r["to_ranks"], r["resume"]) for r in _restarts(out)] == [(4, 3, True)]
    assert summary["resized"]["from_agents"] == 4 and len(summary["iterations"]) == 3
    assert summary["final"]["test_accuracy"] > 0.8


@needs_mpirun
def test_a_rank_lost_under_fault_tolerance_is_grown_back_by_a_restart(tmp_path):
    """--fault-tolerant survives rank 2's death inside the job; the hosts still allow 4, so the
    supervisor restarts the job on 4 from the newest checkpoints and it ends whole."""
    job, _, out = _supervise(tmp_path, ["--fault-tolerant"])
    _when_recorded(job, out, 10)
    os.kill(rank_pid(out, 2), signal.SIGKILL)
    summary = _finished(job, out)
    restarts = _restarts(out)
    assert [(r["from_ranks"], r["to_ranks"], r["resume"]) for r in restarts] == [(4, 4, True)]
    assert "lost 1 rank(s)" in restarts[0]["reason"]
    assert len(summary["iterations"]) == 4 and summary["final"]["test_accuracy"] > 0.8
