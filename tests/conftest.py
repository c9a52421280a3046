"""Fixtures shared by test modules: components that the test setup (.ci/setup.sh) installs before
pytest starts (Horovod, Fashion-MNIST, Slurm). A fixture only checks that its component is there:
nothing is built or installed inside a timed test.

Under CI a missing component fails the tests that need it; elsewhere they skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import faults
from pcasgd.runtime.launch import remove_stale_session_dirs
from tests.mpi_support import HOSTS, PYTHON

FASHION_MNIST = faults.FASHION_MNIST


def missing(what: str) -> None:
    message = f"{what} (bash .ci/setup.sh installs it before the tests)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def no_stale_mpirun_sessions():
    """Each test's mpiruns start without the session directories that mpiruns killed by earlier
    tests left (one given a leftover's pid failed to start: in 3 of the last 7 fresh-clone runs)."""
    remove_stale_session_dirs()


@pytest.fixture(scope="session")
def horovod():
    """Horovod built for this environment (launch/build-horovod.sh)."""
    found = subprocess.run([PYTHON, "-c", "import horovod.torch"], capture_output=True, text=True, timeout=120)
    if found.returncode != 0:
        missing(f"Horovod is not installed in {PYTHON}: {found.stderr.strip()[-300:]}")


@pytest.fixture(scope="session")
def fashion_mnist():
    """Debian's dataset-fashion-mnist package (.ci/datasets.sh)."""
    if not FASHION_MNIST.is_file():
        missing(f"Fashion-MNIST is not installed ({FASHION_MNIST})")


@pytest.fixture
def torchvision_mnist(fashion_mnist, tmp_path) -> Path:
    """A folder where torchvision's ``datasets.MNIST`` finds Fashion-MNIST, so Horovod's examples
    download nothing."""
    return faults.torchvision_mnist(tmp_path)


@pytest.fixture(scope="session")
def slurm():
    """A single-node Slurm that answers (.ci/slurm.sh)."""
    if shutil.which("sbatch") is None:
        missing("Slurm is not installed")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    if "UP" not in ping.stdout:
        missing(f"no Slurm controller answers: {ping.stdout.strip()} {ping.stderr.strip()}")


@pytest.fixture(scope="session")
def hosts():
    """The test hosts node1 and node2 (launch/hosts.sh up, run by .ci/setup.sh)."""
    status = subprocess.run(["bash", str(HOSTS), "status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        missing(f"the test hosts are not up (launch/hosts.sh up 2; needs root and network namespaces): {status.stdout}")


@pytest.fixture(scope="session")
def hosts_slurm(hosts):
    """A Slurm cluster over the test hosts (launch/hosts.sh slurm up, run by .ci/setup.sh)."""
    nodes = subprocess.run(
        ["bash", str(HOSTS), "slurm", "sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=60
    )
    if sorted(nodes.stdout.split()) != ["idle", "idle", "node1", "node2"]:
        missing(f"no Slurm on the test hosts (launch/hosts.sh slurm up): {nodes.stdout.strip()} {nodes.stderr.strip()}")
