"""The Slurm batch scripts, run for real on a single-node Slurm that .ci/setup.sh installs and starts."""

from __future__ import annotations

import json
import os
import subprocess

from tests.mpi_support import PYTHON, ROOT, mpi_env


def test_sbatch_single_node_script_trains_on_4_ranks(slurm, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    script = ["launch/slurm/single-node.sbatch", "--epochs", "3", "--delay", "fixed:1", "--out", str(out)]
    env = {**mpi_env(), "PCASGD_VENV": str(os.path.dirname(os.path.dirname(PYTHON)))}
    done = subprocess.run(
        ["sbatch", "--wait", "--ntasks=4", f"--output={log}", *script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + log.read_text() if log.exists() else done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["agents"] == 4 and summary["config"]["backend"] == "mpi"
    assert summary["staleness"]["max"] >= 1
    assert "final test accuracy" in log.read_text()


def test_srun_without_pmix_starts_singletons_and_each_says_so(slurm, tmp_path):
    command = [PYTHON, "-m", "pcasgd.cli", "train", "--backend", "mpi", "--agents", "2", "--out", str(tmp_path / "r")]
    done = subprocess.run(
        ["srun", "--mpi=none", "-n", "2", *command],
        cwd=ROOT,
        env=mpi_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert done.stderr.count("the launcher started 2 processes (SLURM_STEP_NUM_TASKS) but the MPI world has 1") == 2
    assert "singletons" in done.stderr
