"""ssgd through Horovod against ssgd through MPI allreduce, on real ranks (mpirun)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.mpi_support import PYTHON, ROOT, needs_mpirun, train

pytestmark = needs_mpirun


@pytest.fixture(scope="module")
def horovod():
    """Build (first time: 5-10 minutes, then cached outside the repository) and install Horovod."""
    env = {**os.environ, "PCASGD_VENV": str(Path(PYTHON).parents[1])}
    built = subprocess.run(
        ["bash", "launch/build-horovod.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    if built.returncode != 0:
        message = f"Horovod could not be built: {built.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.timeout(1800)
def test_ssgd_through_horovod_equals_ssgd_through_mpi(horovod, tmp_path):
    weights = {}
    for comm in ("mpi", "horovod"):
        out = tmp_path / comm
        result = train(2, "--mode", "ssgd", "--comm", comm, "--epochs", "2", "--out", str(out), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        weights[comm] = torch.load(out / "model.pt")
    difference = max(float((weights["mpi"][k] - weights["horovod"][k]).abs().max()) for k in weights["mpi"])
    assert difference <= 1e-6, difference
