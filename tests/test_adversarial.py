"""Bad input as an adversarial user gives it: each must end with exit status 2, one
``pcasgd: error:`` line (per rank under mpirun), no traceback, and an earlier run in the same
directory left byte for byte as it was (``--overwrite`` included)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.mpi_support import MPIRUN, PYTHON, ROOT, mpi_env, needs_mpirun

TRAIN = [PYTHON, "-m", "pcasgd.cli", "train"]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished 2-epoch digits run, the directory every bad command below points at."""
    run = tmp_path_factory.mktemp("adversarial") / "run"
    done = subprocess.run([*TRAIN, "--epochs", "2", "--out", str(run)], cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(done: subprocess.CompletedProcess, expected: str, ranks: int = 1) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("pcasgd: error")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors and expected in errors[0], done.stderr[-3000:]
    if ranks == 1:
        assert len(errors) == 1, done.stderr[-3000:]
    else:  # under mpirun each rank may say it before the launcher stops the others
        assert len(errors) <= ranks, done.stderr[-3000:]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pcasgd.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


TRAIN_INPUTS = [
    (["--deadline", "nan"], "argument --deadline: expected a finite number"),
    (["--deadline", "inf"], "argument --deadline: expected a finite number"),
    (["--startup-deadline", "-1"], "argument --startup-deadline: -1 is outside"),
    (["--lr", "nan"], "argument --lr: expected a finite number"),
    (["--lr", "inf"], "argument --lr: expected a finite number"),
    (["--weight-decay", "inf"], "argument --weight-decay: expected a finite number"),
    (["--seed", "99999999999999999999999"], "argument --seed: 99999999999999999999999 is outside"),
    (["--partition", "dirichlet:inf"], "unknown partition 'dirichlet:inf'"),
    (["--agents", "10000"], "10000 agents but only 1437 training samples"),
    (["--mode", "dcasgd-c", "--lam-adaptive"], "--lam-adaptive applies to"),
    (["--resume", "RUN", "--epochs", "1"], "has finished its 2 epochs"),
    (["--resume", "RUN", "--epochs", "2"], "has finished its 2 epochs"),
]


@pytest.mark.parametrize(("flags", "expected"), TRAIN_INPUTS, ids=[" ".join(f) for f, _ in TRAIN_INPUTS])
def test_bad_train_input_is_refused_and_touches_nothing(earlier_run, flags, expected):
    before = snapshot(earlier_run)
    flags = [str(earlier_run) if flag == "RUN" else flag for flag in flags]
    where = [] if "--resume" in flags else ["--epochs", "2", "--out", str(earlier_run), "--overwrite"]
    assert_refused(run_cli("train", *where, *flags), expected)
    assert snapshot(earlier_run) == before


def test_a_config_file_that_is_not_utf8_is_refused(earlier_run, tmp_path):
    before = snapshot(earlier_run)
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"epochs: \xff\xfe\n")
    done = run_cli("train", "--config", str(config), "--out", str(earlier_run), "--overwrite")
    assert_refused(done, "is not UTF-8 text")
    assert snapshot(earlier_run) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\xff\xfe binary \x80\x81", "a metrics or summary file is corrupt"),
        (b'{"epoch": 1}\n', "line 1 is not a pcasgd epoch record"),
        (b"[1, 2]\n", "line 1 is not a pcasgd epoch record"),
    ],
)
def test_plot_refuses_metrics_that_are_not_records(tmp_path, content, expected):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(content)
    assert_refused(run_cli("plot", str(run)), expected)
    assert sorted(path.name for path in run.iterdir()) == ["metrics.jsonl"]


def test_plot_and_compare_refuse_an_out_folder_under_a_file(earlier_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_refused(run_cli("plot", str(earlier_run), "--out", str(blocker / "figures")), "cannot create the folder")
    done = run_cli("compare", "--modes", "dsgd", "--epochs", "1", "--out", str(blocker / "grid"))
    assert_refused(done, "cannot create the folder")
    assert blocker.read_text() == "not a folder"


@needs_mpirun
def test_a_lag_larger_than_memory_is_refused_under_mpirun(earlier_run):
    before = snapshot(earlier_run)
    flags = ["--backend", "mpi", "--delay", "fixed:1000000000", "--out", str(earlier_run), "--overwrite"]
    done = subprocess.run(
        [MPIRUN, "-n", "2", *TRAIN, *flags], cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=300
    )
    assert_refused(done, "a lag of 1000000000 iterations needs 1000000002 snapshot slots per rank", ranks=2)
    assert snapshot(earlier_run) == before
    assert json.loads((earlier_run / "summary.json").read_text())["config"]["epochs"] == 2
