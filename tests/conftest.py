"""Fixtures shared by test modules: components the test setup installs (Horovod, Fashion-MNIST).

Under CI a component that cannot be installed fails the tests that need it; elsewhere they skip
with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.mpi_support import PYTHON, ROOT


def _installed_or_skip(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        message = f"{what}: {done.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def horovod():
    """Build (first time: 5-10 minutes, then cached outside the repository) and install Horovod."""
    env = {**os.environ, "PCASGD_VENV": str(Path(PYTHON).parents[1])}
    built = subprocess.run(
        ["bash", "launch/build-horovod.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    _installed_or_skip(built, "Horovod could not be built")


@pytest.fixture(scope="session")
def fashion_mnist():
    """Debian's dataset-fashion-mnist package (.ci/datasets.sh)."""
    done = subprocess.run(["bash", ".ci/datasets.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    _installed_or_skip(done, "Fashion-MNIST could not be installed (.ci/datasets.sh)")
