"""The run directory: one run at a time, --overwrite that loses nothing, a full disk."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from pcasgd import cli, topology
from pcasgd.app.resize import agent_sources
from pcasgd.app.run_files import LOCK, REPLACED, RunDirectory
from pcasgd.errors import ConfigError
from tests.mpi_support import MPIRUN, PYTHON, ROOT, mpi_env, needs_mpirun


def files_of(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def test_a_second_run_on_a_locked_directory_is_refused_and_touches_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(run)]) == 0
    before = files_of(run)
    with (run / LOCK).open("w") as holder:  # as a run writing there now holds it
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242")
        holder.flush()
        for flags in (["--out", str(run), "--overwrite"], ["--resume", str(run), "--epochs", "4"]):
            assert cli.main(["train", "--epochs", "2", *flags]) == 2
            assert f"another pcasgd run (pid 4242) is writing to {run}" in capsys.readouterr().err
    (run / LOCK).unlink()
    assert files_of(run) == before


def test_the_run_directory_lock_is_released_and_removed(tmp_path):
    run = tmp_path / "run"
    first = RunDirectory(run)
    first.open(overwrite=False, resumed_records=None)
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        RunDirectory(run).open(overwrite=True, resumed_records=None)
    first.close(succeeded=True)
    assert not (run / LOCK).exists()
    RunDirectory(run).open(overwrite=False, resumed_records=None)


def test_overwrite_puts_the_earlier_run_back_when_the_new_one_fails_before_its_first_record(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(run)]) == 0
    before = files_of(run)
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--overwrite", "--lr", "1e300"]) == 1
    assert "diverged" in capsys.readouterr().err
    assert files_of(run) == before and not (run / REPLACED).exists()


def test_overwrite_replaces_the_earlier_run_once_the_new_one_has_started(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--overwrite"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and not (run / REPLACED).exists() and not (run / LOCK).exists()


def test_a_resume_that_fails_before_its_first_record_leaves_the_finished_run_as_it_was(tmp_path):
    """A resume cuts the metrics back to its checkpoint and drops the summary and the model; a
    resume that failed there had destroyed a finished run's results (issue 23)."""
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(run)]) == 0
    before = files_of(run)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    resumed = RunDirectory(run)
    resumed.open(overwrite=False, resumed_records=[first])
    assert not (run / "summary.json").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    resumed.close(succeeded=False)
    assert files_of(run) == before and not (run / REPLACED).exists()
    # once the resumed run has recorded, what it replaced is gone
    resumed = RunDirectory(run)
    resumed.open(overwrite=False, resumed_records=[first])
    resumed.started()
    resumed.close(succeeded=False)
    assert not (run / "summary.json").exists() and not (run / REPLACED).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs: room for the metrics of an epoch, not for a checkpoint."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def assert_full_disk_ended_cleanly(run: Path, stderr: str, some_records: bool) -> None:
    """One error line first, no traceback, no temporary file, and the records that were written
    whole (``some_records``: at least one; under mpirun another rank may fill the disk first).
    Under mpirun the ranks the launcher then stops say so too, and mpirun merges the ranks'
    streams in no set order (once with a leading space): those lines are not the cause."""
    errors = [line.strip() for line in stderr.splitlines() if line.strip().startswith("pcasgd: error")]
    causes = [line for line in errors if "stopped by the launcher" not in line]
    assert causes and "cannot write" in causes[0] and "the records written before are kept" in causes[0], stderr
    assert "Traceback" not in stderr, stderr
    assert not [path for path in run.rglob("*.tmp")]  # no temporary left behind
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    assert [record["epoch"] for record in records] == list(range(1, len(records) + 1))
    assert records or not some_records


def test_a_full_disk_is_one_error_line_and_keeps_the_records(small_disk):
    run = small_disk / "run"
    command = [PYTHON, "-m", "pcasgd.cli", "train", "--epochs", "3", "--out", str(run)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert_full_disk_ended_cleanly(run, done.stderr, some_records=True)


@needs_mpirun
def test_a_full_disk_under_mpirun_ends_every_rank_and_keeps_the_records(small_disk):
    run = small_disk / "run"
    command = ["-n", "2", PYTHON, "-m", "pcasgd.cli", "train", "--backend", "mpi", "--epochs", "3", "--out", str(run)]
    done = subprocess.run([MPIRUN, *command], cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert_full_disk_ended_cleanly(run, done.stderr, some_records=False)


def test_two_runs_started_together_on_one_directory_never_mix_their_records(tmp_path):
    run = tmp_path / "run"
    command = [PYTHON, "-m", "pcasgd.cli", "train", "--epochs", "6", "--out", str(run)]
    jobs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    outcomes = sorted((job.wait(timeout=300), job.communicate()[1]) for job in jobs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    refusal = outcomes[1][1]
    # refused by the lock while the other writes, or (if it came second) by the finished run
    assert "another pcasgd run" in refusal or "already holds a run" in refusal, refusal
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_a_resized_run_keeps_its_survivors_in_order_and_copies_a_lower_in_neighbour():
    """app/resize.py: ring of 6 from survivors 0, 1, 3 of 4; the same run shrunk to 2."""
    ring = topology.build("ring", 6)
    assert agent_sources([0, 1, 3], 6, ring) == [0, 1, 3, 3, 3, 0]
    assert agent_sources([0, 1, 2, 3], 2, topology.build("ring", 2)) == [0, 1]
