"""ssgd through Horovod against ssgd through MPI allreduce, on real ranks: Horovod under mpirun
(its MPI controller, on mpi4py's MPI) and under ``horovodrun --gloo`` (no MPI world at all)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests.mpi_support import PYTHON, ROOT, mpi_env, needs_mpirun, train

pytestmark = needs_mpirun


def horovodrun_gloo(*flags: str) -> subprocess.CompletedProcess:
    """launch/horovodrun.sh: ``horovodrun --gloo`` on 2 local processes."""
    env = {**mpi_env(), "PCASGD_VENV": str(Path(PYTHON).parents[1])}
    command = ["bash", "launch/horovodrun.sh", "-n", "2", *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.mark.timeout(1800)
def test_ssgd_through_horovod_equals_ssgd_through_mpi(horovod, tmp_path):
    flags = ["--mode", "ssgd", "--epochs", "2"]
    weights = {}
    for comm in ("mpi", "horovod"):
        result = train(2, *flags, "--comm", comm, "--out", str(tmp_path / comm), timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        weights[comm] = torch.load(tmp_path / comm / "model.pt")
    result = horovodrun_gloo(*flags, "--comm", "horovod", "--out", str(tmp_path / "gloo"))
    assert result.returncode == 0, result.stdout[-3000:]
    weights["gloo"] = torch.load(tmp_path / "gloo" / "model.pt")
    assert max_difference(weights["mpi"], weights["horovod"]) <= 1e-6
    assert max_difference(weights["mpi"], weights["gloo"]) <= 1e-6


def test_horovodrun_gloo_refuses_modes_that_need_an_mpi_world(horovod, tmp_path):
    result = horovodrun_gloo("--mode", "pcasgd", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # horovodrun terminates the other worker as soon as one exits, so only the first refusal is sure to print.
    assert "pcasgd: error: the launcher started 2 processes (HOROVOD_SIZE) but the MPI world has 1" in output, output
    assert "exit with status code 2" in output, output
    assert not (tmp_path / "run").exists()


def test_horovod_elastic_needs_elastic_horovodrun_and_a_deadline_above_gloos_timeout(horovod, tmp_path):
    """ssgd --comm horovod --fault-tolerant: under plain horovodrun --gloo the run is refused on
    every rank; in elastic mode a --deadline at or below gloo's timeout would end the survivors of
    a death before Horovod tells them of it."""
    flags = ["--mode", "ssgd", "--comm", "horovod", "--fault-tolerant", "--epochs", "1"]
    result = horovodrun_gloo(*flags, "--out", str(tmp_path / "plain"))
    assert result.returncode != 0 and "launch with horovodrun in elastic mode" in result.stdout + result.stderr

    from pcasgd.errors import ConfigError
    from pcasgd.runtime.elastic import check_elastic

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOROVOD_ELASTIC", "1")
        patch.setenv("HOROVOD_GLOO_TIMEOUT_SECONDS", "30")
        with pytest.raises(ConfigError, match="gloo's timeout: 30 s"):
            check_elastic(30.0)
        check_elastic(31.0)
